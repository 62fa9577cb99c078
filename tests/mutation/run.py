"""`make mutation`: mutmut over the pure packages, with the unit tests only, and the score.

    python -m tests.mutation.run --paths src/sipshadow/sip src/sipshadow/core ... [--sample N] [--seed S]

It copies `src/` and `tests/` into a work directory (`.mutation/` by default, rebuilt on
every run, so a run sees one snapshot of the tree even while it is being edited), writes
mutmut's `[tool.mutmut]` section there, has mutmut generate every mutant of the files under
`--paths`, draws a seeded sample of them (stratified by package, the same sample for the same
tree and seed; `--sample 0` takes them all), runs mutmut on that sample, and prints the
score: killed / total and %, overall and per package, with a 95 % Wilson interval, and the
names of the survivors (`cd .mutation && ../.venv/bin/mutmut show NAME` shows one's diff).

A mutant counts as killed when a test fails or it times out; one that no test reaches counts
as surviving. Mutants that are equivalent to the code are marked in the source with
`# pragma: no mutate` and never generated.

Exit status 1 when the overall score is below `--min` percent (0 switches the check off).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Unit tests that run a type checker, spawn processes or run real sockets and clocks: the
#: mutants live in this process's copy of the code, so these can see none of them.
IGNORED_TESTS = (
    "tests/unit/test_types.py",
    "tests/unit/test_ci_skips.py",
    "tests/unit/test_determinism_across_processes.py",
    "tests/unit/test_layering.py",
    "tests/unit/test_purity.py",
    "tests/unit/test_cli_flags.py",
    "tests/unit/test_lab_process.py",
    "tests/unit/test_detector_window.py",
)
KILLED = {1, 3, 36, -24, 24, 152, 255}  # a test failed (or pytest broke), or a timeout (SIGXCPU)
#: The fewest mutants a sample takes from one package (all of them if it has fewer).
FLOOR = 40
PROGRESS_RE = re.compile(r"(\d+)/(\d+)\s+\S+ (\d+)")


def mutmut_config(paths: list[str]) -> str:
    """The `[tool.mutmut]` section for the work directory."""
    selection = ["tests/unit", *(f"--ignore={test}" for test in IGNORED_TESTS)]
    settings = {
        "source_paths": ["src"],
        "only_mutate": [f"{path.rstrip('/')}/*" for path in paths],
        "pytest_add_cli_args_test_selection": selection,
        "pytest_add_cli_args": ["-p", "tests.mutation.plugin", "-p", "no:cacheprovider", "-p", "no:randomly"],
        "use_git_change_detection": False,
        "timeout_multiplier": 10.0,
    }
    return "\n[tool.mutmut]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items())


def prepare(work: Path, paths: list[str]) -> None:
    """A fresh work directory: src/, tests/ and pyproject.toml with the mutmut section."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis")
    shutil.copytree(ROOT / "src", work / "src", ignore=ignore)
    shutil.copytree(ROOT / "tests", work / "tests", ignore=ignore)
    project = (ROOT / "pyproject.toml").read_text()
    if "tool" in tomllib.loads(project) and "mutmut" in tomllib.loads(project)["tool"]:
        sys.exit("pyproject.toml has its own [tool.mutmut]: this script writes the section itself")
    (work / "pyproject.toml").write_text(project + mutmut_config(paths))


def run_mutmut(work: Path, names: list[str], jobs: int) -> int:
    """`mutmut run` on `names` in `work`, its output in `work/mutmut-run.log`; a progress line
    every minute. Returns its exit status."""
    binary = Path(sys.executable).with_name("mutmut")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("CI", None)  # tests/conftest.py turns a skip into a failure under CI
    log = work / "mutmut-run.log"
    with log.open("w") as out:
        child = subprocess.Popen([str(binary), "run", "--max-children", str(jobs), *names], cwd=work, env=env,
                                 stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
        while True:
            try:
                return child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                progress = PROGRESS_RE.findall(log.read_text(errors="replace")[-2000:])
                if progress:
                    done, total, killed = progress[-1]
                    print(f"  {done}/{total} run, {killed} killed", flush=True)


def generate(work: Path) -> dict[str, str]:
    """Every mutant of the files under the paths, by name, with the source file it is in.

    mutmut makes them as the first step of `run`; this takes that step alone, with its own
    functions, so that the sample can be drawn before anything runs.
    """
    code = (
        "import sys\n"
        "from mutmut.__main__ import copy_also_copy_files, copy_src_dir, create_mutants, setup_source_paths\n"
        "from mutmut.mutation.data import SourceFileMutationData\n"
        "from mutmut.utils.file_utils import walk_mutatable_files\n"
        "import json, os\n"
        "os.makedirs('mutants', exist_ok=True)\n"
        "copy_src_dir(); copy_also_copy_files(); setup_source_paths(); create_mutants(2)\n"
        "names = {}\n"
        "for path in walk_mutatable_files():\n"
        "    data = SourceFileMutationData(path=path); data.load()\n"
        "    names.update(dict.fromkeys(data.exit_code_by_key, str(path)))\n"
        "sys.stdout.write('MUTANTS ' + json.dumps(names))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=work, text=True, capture_output=True, check=False)
    marker = done.stdout.rfind("MUTANTS ")
    if done.returncode != 0 or marker < 0:
        sys.exit(f"mutant generation failed:\n{done.stdout}\n{done.stderr}")
    names: dict[str, str] = json.loads(done.stdout[marker + len("MUTANTS ") :])
    return names


def package_of(path: str, paths: list[str]) -> str:
    """The `--paths` entry a source file is under, as a short name (`sip`, `core`, ...)."""
    for entry in sorted(paths, key=len, reverse=True):
        if path == entry or path.startswith(entry.rstrip("/") + "/"):
            return Path(entry).name.removesuffix(".py")
    return "?"


def sample(names: dict[str, str], paths: list[str], size: int, seed: int) -> list[str]:
    """A seeded sample of about `size` mutants (all when `size` is 0 or not less than there are):
    each package gets its share in proportion to its mutant count, but at least `FLOOR` (or
    all it has), so that every package has a figure of its own."""
    ordered = sorted(names)
    if size <= 0 or size >= len(ordered):
        return ordered
    rng = random.Random(seed)
    chosen: list[str] = []
    for _package, members in sorted(by_package(ordered, names, paths).items()):
        share = max(FLOOR, round(size * len(members) / len(ordered)))
        chosen.extend(rng.sample(members, min(share, len(members))))
    return sorted(chosen)


def by_package(chosen: list[str], names: dict[str, str], paths: list[str]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for name in chosen:
        grouped.setdefault(package_of(names[name], paths), []).append(name)
    return grouped


def wilson(killed: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The 95 % Wilson score interval of a proportion, in percent."""
    if total == 0:
        return 0.0, 100.0
    p = killed / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return 100 * max(0.0, centre - half), 100 * min(1.0, centre + half)


def results(work: Path, names: list[str], files: dict[str, str]) -> dict[str, int | None]:
    """Each chosen mutant's exit code as mutmut recorded it (None: not run)."""
    codes: dict[str, int | None] = {}
    for path in sorted({files[name] for name in names}):
        meta = json.loads((work / "mutants" / (path + ".meta")).read_text())
        for name in names:
            if files[name] == path:
                codes[name] = meta["exit_code_by_key"].get(name)
    return codes


def report(codes: dict[str, int | None], files: dict[str, str], paths: list[str], population: dict[str, int]) -> float:
    """Print the score table and the survivors; return the overall score in percent.

    A package's score is its sample's; the overall one weighs each package's score by its
    share of all the mutants (a stratified estimate: the small packages' floor does not
    tilt it), with a normal 95 % interval that corrects for sampling without replacement.
    """
    rows: dict[str, list[int]] = {}
    survivors: list[str] = []
    for name, code in sorted(codes.items()):
        row = rows.setdefault(package_of(files[name], paths), [0, 0])
        row[1] += 1
        if code in KILLED:
            row[0] += 1
        else:
            survivors.append(f"{name}  ({'not run' if code is None else code})")
    everyone = sum(population.values())
    print("\nmutation score: killed / run (of all generated), 95 % interval")
    estimate = variance = 0.0
    for package in sorted(rows):
        killed, tested = rows[package]
        whole = population.get(package, tested)
        share, p = whole / everyone, killed / tested
        estimate += share * p
        if tested > 1:
            variance += share * share * p * (1 - p) / (tested - 1) * (1 - tested / whole)
        low, high = (100 * p, 100 * p) if tested == whole else wilson(killed, tested)
        print(f"  {package:<12} {killed:>5} / {tested:<5} (of {whole:>5})  {100 * p:5.1f} %  [{low:5.1f}, {high:5.1f}]")
    killed = sum(row[0] for row in rows.values())
    tested = sum(row[1] for row in rows.values())
    half = 1.96 * math.sqrt(variance)
    low, high = max(0.0, estimate - half), min(1.0, estimate + half)
    print(f"  {'all':<12} {killed:>5} / {tested:<5} (of {everyone:>5})  {100 * estimate:5.1f} %  "
          f"[{100 * low:5.1f}, {100 * high:5.1f}]")  # fmt: skip
    if survivors:
        print(f"\nsurvivors ({len(survivors)}):")
        for line in survivors:
            print(f"  {line}")
    return 100 * estimate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paths", nargs="+", required=True, help="source directories (or files) to mutate")
    parser.add_argument("--sample", type=int, default=0, help="mutants to run, drawn by seed (0: all)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--min", type=float, default=0.0, help="fail below this overall score (percent)")
    parser.add_argument("--work", type=Path, default=ROOT / ".mutation")
    args = parser.parse_args(argv)
    started = time.monotonic()
    prepare(args.work, args.paths)
    files = generate(args.work)
    population: dict[str, int] = {}
    for path in files.values():
        package = package_of(path, args.paths)
        population[package] = population.get(package, 0) + 1
    chosen = sample(files, args.paths, args.sample, args.seed)
    print(f"{len(files)} mutants generated; running {len(chosen)} (seed {args.seed}) with {args.jobs} workers",
          flush=True)  # fmt: skip
    status = run_mutmut(args.work, chosen, args.jobs)
    codes = results(args.work, chosen, files)
    if status != 0 or all(code is None for code in codes.values()):
        print((args.work / "mutmut-run.log").read_text(errors="replace")[-4000:])
        print(f"mutmut run failed (exit {status}); its output is in {args.work / 'mutmut-run.log'}")
        return 2
    score = report(codes, files, args.paths, population)
    print(f"\n{time.monotonic() - started:.0f} s; work directory {args.work}")
    if score < args.min:
        print(f"mutation score {score:.1f} % is below the minimum {args.min:g} %")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

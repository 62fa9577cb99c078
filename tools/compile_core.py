"""Compile the pure packages (`sipshadow._native.sources()`) with mypyc, beside their sources.

`make setup` runs it. mypyc turns the type-hinted modules into one C extension group: classes
become native (attribute access by offset), calls between the compiled modules go straight to
C. The build lands next to each `.py` (`core/gateway.cpython-311-*.so`) plus the group's shared
library in `src/`; `sipshadow._native` uses it only while no source is newer. A failed build
(no C compiler, no Python headers) leaves none: the node then runs as pure Python, slower.

    .venv/bin/python tools/compile_core.py            # build
    .venv/bin/python tools/compile_core.py --clean    # remove the build (pure Python)

Exit status 0 when the build is in place, 1 when compiling failed (the reason on stderr).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
PACKAGE = SRC / "sipshadow"
BUILD = ROOT / "build" / "mypyc"
sys.path.insert(0, str(SRC))
from sipshadow._native import COMPILED_PACKAGES, sources  # noqa: E402  (the one list of what is compiled)


def built() -> list[Path]:
    """Every file a build put in the source tree."""
    return [*PACKAGE.glob("*/*.so"), *SRC.glob("*__mypyc*.so")]


def clean() -> None:
    for path in built():
        path.unlink()


def build() -> int:
    clean()  # a half-old build must never be left behind
    shutil.rmtree(BUILD, ignore_errors=True)
    for package in COMPILED_PACKAGES:
        (BUILD / "sipshadow" / package).mkdir(parents=True)
    started = time.monotonic()
    # mypyc derives each module's name from the package layout (sipshadow.core.gateway) and builds
    # in place under the working directory: BUILD/sipshadow/core/gateway.*.so, BUILD/<group>.so
    command = [sys.executable, "-m", "mypyc", *map(str, sources())]
    env = {**os.environ, "MYPYPATH": str(SRC)}
    done = subprocess.run(command, cwd=BUILD, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-15:]
        print("compile_core: mypyc failed; the node runs as pure Python\n" + "\n".join(tail), file=sys.stderr)
        return 1
    outputs = list(BUILD.glob("sipshadow/*/*.so")) + list(BUILD.glob("*__mypyc*.so"))
    for output in outputs:
        target = SRC / output.relative_to(BUILD)
        shutil.copy2(output, target)
        os.utime(target)  # newer than every source it was built from
    missing = [source for source in sources() if not any(source.stem + "." in o.name for o in outputs)]
    if missing:
        clean()
        print(f"compile_core: no extension built for {', '.join(map(str, missing))}; pure Python", file=sys.stderr)
        return 1
    print(f"compile_core: {len(sources())} modules compiled with mypyc in {time.monotonic() - started:.0f} s")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clean", action="store_true", help="remove the build: pure Python")
    args = parser.parse_args()
    if args.clean:
        clean()
        return 0
    return build()


if __name__ == "__main__":
    sys.exit(main())

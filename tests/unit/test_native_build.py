"""The compiled build of sip/ and core/ (mypyc, `make setup`) against the pure-Python sources.

Both must give byte-identical outputs and state digests for the same events, else a shadow
running one and a primary running the other would diverge; and a build older than its source
must never run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sipshadow import _native

ROOT = Path(__file__).resolve().parents[2]


def replay(pure: bool) -> dict[str, Any]:
    env = {**os.environ, _native.PURE_ENV: "1" if pure else "0"}
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "native" / "replay.py"), "400"], env=env,
                          capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_the_compiled_build_and_the_sources_give_identical_outputs_and_digests() -> None:
    compiled, pure = replay(pure=False), replay(pure=True)
    assert compiled["state"] == "compiled", (
        f"the compiled core is not in use ({compiled['state']}): `make setup` builds it (tools/compile_core.py)"
    )
    assert compiled["compiled_modules"] == len(_native.sources()) and pure["compiled_modules"] == 0
    assert pure["state"] == f"pure: {_native.PURE_ENV}"
    assert compiled["events"] == pure["events"] > 2000
    assert (compiled["digest"], compiled["state_digest"], compiled["counters"]) == (
        pure["digest"], pure["state_digest"], pure["counters"]
    )


def tree(root: Path) -> list[Path]:
    """A package tree like sipshadow's compiled part: one module in each compiled package."""
    modules = []
    for package in _native.COMPILED_PACKAGES:
        (root / package).mkdir(parents=True)
        (root / package / "__init__.py").write_text("")
        modules.append(root / package / "mod.py")
        modules[-1].write_text("")
    for left_as_python in _native.NOT_COMPILED:
        (root / left_as_python).write_text("")  # never compiled: no build expected
    return modules


def test_a_build_is_used_only_when_complete_and_newer_than_every_source(tmp_path: Path) -> None:
    modules = tree(tmp_path)
    assert _native.state(tmp_path, {}) == "pure: no build"
    _native.extension_of(modules[0]).write_bytes(b"")
    assert _native.state(tmp_path, {}) == "pure: build incomplete"
    for module in modules:
        _native.extension_of(module).write_bytes(b"")
        os.utime(module, (1_000_000, 1_000_000))
    assert _native.state(tmp_path, {}) == "compiled"
    assert _native.state(tmp_path, {_native.PURE_ENV: "1"}) == f"pure: {_native.PURE_ENV}"
    assert _native.state(tmp_path, {_native.PURE_ENV: "0"}) == "compiled"
    os.utime(modules[-1])  # edited after the build: the whole build is set aside
    assert _native.state(tmp_path, {}).startswith("pure: build older than its source")


@pytest.mark.parametrize("name", ["core/records.py", "core/counters.py", "replication/log.py", "replication/wire.py"])
def test_modules_msgspec_reads_stay_python(name: str) -> None:
    assert name in _native.NOT_COMPILED
    assert not any(str(path).endswith(f"sipshadow/{name}") for path in _native.sources())


def grown(script: str, calls: int) -> dict[str, Any]:
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "native" / script), str(calls)],
                          env={**os.environ, _native.PURE_ENV: "0"}, capture_output=True, text=True, timeout=120,
                          check=True)  # fmt: skip
    result: dict[str, Any] = json.loads(done.stdout)
    assert result["state"] == "compiled", result
    return result


def test_the_compiled_core_keeps_memory_flat_over_whole_calls() -> None:
    """15 000 calls after a warm-up, dialogs reaped as they go: the build that leaked a bytes
    concatenation's result (mypyc 1.19) grew 44 MB here; a flat one grows a few hundred KiB."""
    result = grown("leak.py", 20000)
    assert result["held"] < 1000 and result["rss_growth_kib"] < 4096, result


def test_the_compiled_replication_keeps_memory_flat_over_whole_calls() -> None:
    """The same through a primary and its shadow in memory (recorder, sealed link, follower):
    with `+` on bytes in link/ it grew 5.7 MB over 12 000 calls; joined, 0.1 MB."""
    result = grown("leak_pair.py", 16000)
    assert result["dropped"] == 0 and result["rss_growth_kib"] < 2048, result

"""The deterministic core imports no clock, randomness, sockets, threads or OS access."""

import ast
from pathlib import Path

import pytest

import sipshadow

#: Every module of these packages: the core, replication's recorder, follower, log, wire
#: format, tap pairing and replica, the HA role table and the link framing.
PURE_PACKAGES = ("sip", "core", "replication", "ha", "link")
#: The pure half of determinism: its recorder and replayer. (`determinism/system.py` is the one
#: real source of randomness; the shells in runtime/ and detect/ are I/O by design.)
PURE_MODULES = ("determinism/__init__.py", "determinism/recording.py")
FORBIDDEN = {
    "time",
    "random",
    "secrets",
    "uuid",
    "socket",
    "asyncio",
    "os",
    "datetime",
    "threading",
    "selectors",
    "subprocess",
    "signal",
    "multiprocessing",
}
ROOT = Path(sipshadow.__file__).parent
PURE_FILES = sorted(
    [path for package in PURE_PACKAGES for path in (ROOT / package).rglob("*.py")]
    + [ROOT / module for module in PURE_MODULES]
)


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            names.add("__import__")
    return names


def test_pure_packages_exist() -> None:
    assert len(PURE_FILES) >= 8, PURE_FILES
    assert all(path.is_file() for path in PURE_FILES), [path for path in PURE_FILES if not path.is_file()]


@pytest.mark.parametrize("path", PURE_FILES, ids=lambda path: str(path.relative_to(ROOT)))
def test_pure_module_imports_nothing_impure(path: Path) -> None:
    bad = imported_modules(path) & (FORBIDDEN | {"__import__"})
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_guard_catches_an_impure_module(tmp_path: Path) -> None:
    impure = tmp_path / "impure.py"
    impure.write_text("import time as clock\nfrom os import path\n")
    assert {"time", "os"} <= imported_modules(impure)

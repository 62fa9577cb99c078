"""The compiled build of the pure packages (mypyc), used only while it matches its source.

`make setup` compiles `sip/`, `core/` and replication's pure halves with mypyc
(`tools/compile_core.py`) into extension modules beside their sources, and Python imports an
extension before a `.py` of the same name.
A build older than any of its sources (one edited or checked out since) would run old code,
and mypyc binds the calls between the modules it compiled together, so such a build is not
used at all: every module then imports from its source. `SIPSHADOW_PURE=1` does the same on
purpose; the tests compare the two (tests/unit/test_native_build.py). Without a C compiler the
build is simply absent, and the node runs as pure Python, only slower.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

__all__ = ["COMPILED_PACKAGES", "NOT_COMPILED", "PURE_ENV", "STATE", "compiled_modules", "extension_of", "sources",
           "state"]

PURE_ENV = "SIPSHADOW_PURE"
#: The subpackages tools/compile_core.py compiles: the hot path (parsing and every decision) and
#: the pure halves of replication (the recorder, the follower, the link's framing and sessions).
COMPILED_PACKAGES = ("sip", "core", "replication", "link")
#: Left as Python (package/file), with every `__init__.py`: msgspec reads the annotations of its
#: Structs (the record, the log entry, the wire's messages, the handshake's) and of a dataclass
#: it decodes (the counters, in the status document), and mypyc does not keep them as written;
#: `replica.py` subclasses a builtin, which mypyc cannot compile.
NOT_COMPILED = frozenset({"core/records.py", "core/counters.py", "replication/log.py",
                          "replication/wire.py", "replication/streams.py", "replication/replica.py",
                          "link/handshake.py"})  # fmt: skip
_ROOT = Path(__file__).resolve().parent
_SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]  # ".cpython-311-x86_64-linux-gnu.so"


def extension_of(source: Path) -> Path:
    """Where the compiled build of `source` (a .py file) lives."""
    return source.with_name(source.stem + _SUFFIX)


def sources(root: Path = _ROOT) -> list[Path]:
    """The modules the build compiles, in a stable order."""
    return sorted(path for package in COMPILED_PACKAGES for path in (root / package).glob("*.py")
                  if path.name != "__init__.py" and f"{package}/{path.name}" not in NOT_COMPILED)  # fmt: skip


def state(root: Path = _ROOT, environ: dict[str, str] | os._Environ[str] = os.environ) -> str:
    """"compiled", or why the sources run: "pure: SIPSHADOW_PURE", "pure: no build",
    "pure: build older than its source (make setup rebuilds it)", "pure: build incomplete"."""
    if environ.get(PURE_ENV, "") not in ("", "0"):
        return f"pure: {PURE_ENV}"
    compiled = sources(root)
    built = [extension_of(path) for path in compiled if extension_of(path).exists()]
    if not built:
        return "pure: no build"
    if len(built) != len(compiled):
        return "pure: build incomplete"
    if any(source.stat().st_mtime > extension_of(source).stat().st_mtime for source in compiled):
        return "pure: build older than its source (make setup rebuilds it)"
    return "compiled"


class _SourcesOnly(importlib.abc.MetaPathFinder):
    """Imports sipshadow's modules from their .py even where an extension module sits beside it."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if not fullname.startswith("sipshadow."):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not isinstance(spec.loader, importlib.machinery.ExtensionFileLoader) or not spec.origin:
            return None  # the ordinary finders take it
        source = Path(spec.origin[: -len(_SUFFIX)] + ".py")
        return importlib.util.spec_from_file_location(fullname, source) if source.exists() else None


#: This process's build state, decided once at the first import of sipshadow.
STATE = state()
if STATE != "compiled" and not any(isinstance(finder, _SourcesOnly) for finder in sys.meta_path):
    sys.meta_path.insert(0, _SourcesOnly())


def compiled_modules() -> list[str]:
    """The sipshadow modules loaded so far that run compiled."""
    return sorted(
        name for name, module in list(sys.modules.items())
        if name.startswith("sipshadow.") and isinstance(getattr(module, "__loader__", None),
                                                        importlib.machinery.ExtensionFileLoader)
    )  # fmt: skip

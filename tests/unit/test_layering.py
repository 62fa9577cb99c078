"""The layering of DESIGN.md, however deep the import: what production runs never loads the
namespace test bed, and the failure detector shares only the link format with replication."""

from __future__ import annotations

import subprocess
import sys

PRODUCTION = (
    "sipshadow.cli", "sipshadow.runtime.serve", "sipshadow.runtime.ha", "sipshadow.runtime.identity",
    "sipshadow.net.vip", "sipshadow.net.accept", "sipshadow.net.silent", "sipshadow.net.nft",
    "sipshadow.net.tcp_repair", "sipshadow.net.capture",
)  # fmt: skip
TEST_BED = ("sipshadow.lab.bed", "sipshadow.lab")


def loaded_by(importing: tuple[str, ...], watched: tuple[str, ...]) -> str:
    """The `watched` modules a fresh interpreter holds after importing `importing`."""
    code = (
        f"import importlib, sys\nfor name in {importing!r}: importlib.import_module(name)\n"
        f"print(sorted(name for name in sys.modules if name.startswith({watched!r})))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return loaded.stdout.strip()


def test_production_modules_never_import_the_test_bed() -> None:
    assert loaded_by(PRODUCTION, TEST_BED) == "[]"


def test_net_holds_only_what_production_runs() -> None:
    """Every module of `net/` is a production module, so none of them may load the test bed."""
    from pathlib import Path

    net = Path(__file__).parents[2] / "src" / "sipshadow" / "net"
    modules = {f"sipshadow.net.{path.stem}" for path in net.glob("*.py") if path.stem != "__init__"}
    assert modules <= set(PRODUCTION), sorted(modules - set(PRODUCTION))


def test_the_failure_detector_does_not_import_replication() -> None:
    assert loaded_by(("sipshadow.detect.heartbeat",), ("sipshadow.replication",)) == "[]"


def test_shared_names_are_defined_once() -> None:
    """`Address` lives in `core.actions`; HA modes and policies each have one registry."""
    from pathlib import Path

    source = Path(__file__).parents[2] / "src" / "sipshadow"
    texts = {path: path.read_text() for path in source.rglob("*.py")}
    assert [path.name for path, text in texts.items() if "\nAddress = " in text] == ["actions.py"]
    assert [path.name for path, text in texts.items() if "\nHA_MODES = " in text] == ["config.py"]
    assert sum('"least-active-calls", "weighted-random"' in text for text in texts.values()) == 1


def test_pure_packages_never_import_a_shell() -> None:
    """The state machines (core, replication, ha, link) know nothing of asyncio shells, the
    kernel or the lab: imports point down DESIGN.md's list."""
    pure = ("sipshadow.core", "sipshadow.sip", "sipshadow.determinism", "sipshadow.replication.recorder",
            "sipshadow.replication.follower", "sipshadow.ha.roles", "sipshadow.link")  # fmt: skip
    shells = ("sipshadow.runtime", "sipshadow.net", "sipshadow.detect", "sipshadow.lab", "sipshadow.cli")
    assert loaded_by(pure, shells) == "[]"


def test_the_package_graph_follows_the_layers() -> None:
    """`tools/import_graph.py`: every import points down DESIGN.md's list of packages."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).parents[2]
    spec = importlib.util.spec_from_file_location("import_graph", root / "tools" / "import_graph.py")
    assert spec is not None and spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    graph = tool.import_graph(root / "src" / "sipshadow")
    assert tool.violations(graph) == []
    assert graph["ha"] == set() and graph["replication"] == {"core", "determinism", "link"}
    assert tool.violations({"core": {"runtime"}}) == ["core -> runtime"]

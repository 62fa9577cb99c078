"""Print which sipshadow package imports which, check it against DESIGN.md's layering, and
name the biggest classes of the asyncio shells.

    python tools/import_graph.py [SRC]      (exit 1 if an import points up or sideways)

Layers, lowest first: a package may import only packages to its left.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

LAYERS = (
    "sip", "core", "determinism", "link", "replication", "ha", "detect", "net", "records", "runtime", "lab", "cli",
)  # fmt: skip
SHELLS = ("runtime", "detect", "net", "records")
IO_MODULES = {"asyncio", "socket", "threading", "subprocess", "time", "random", "os", "selectors", "signal"}


def package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "sipshadow" and len(parts) > 1 else None


def import_graph(source: Path) -> dict[str, set[str]]:
    """{package: packages it imports} over every module under `source` (src/sipshadow)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for path in sorted(source.rglob("*.py")):
        relative = path.relative_to(source).with_suffix("")
        importer = relative.parts[0]
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                imported = package_of(name)
                if imported and imported != importer and importer != "__init__":
                    graph[importer].add(imported)
        graph.setdefault(importer, set())
    graph.pop("__init__", None)
    return graph


def io_modules(source: Path) -> dict[str, list[str]]:
    """{package: its modules that import a clock, randomness, sockets, threads or the OS}."""
    found: dict[str, list[str]] = defaultdict(list)
    for path in sorted(source.rglob("*.py")):
        relative = path.relative_to(source)
        tree = ast.parse(path.read_text())
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}  # fmt: skip
        imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}  # fmt: skip
        if imported & IO_MODULES:
            found[relative.parts[0] if len(relative.parts) > 1 else "-"].append(relative.name)
    return found


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports that point up or sideways in `LAYERS`."""
    rank = {name: index for index, name in enumerate(LAYERS)}
    return [
        f"{importer} -> {imported}"
        for importer, imported_set in sorted(graph.items())
        for imported in sorted(imported_set)
        if rank.get(imported, len(LAYERS)) >= rank.get(importer, len(LAYERS))
    ]


def class_sizes(source: Path, packages: tuple[str, ...] = SHELLS) -> list[tuple[int, str]]:
    """(lines, "package/module.py:Class") for every class of `packages`, biggest first."""
    sizes = []
    for package in packages:
        for path in sorted((source / package).rglob("*.py")):
            for node in ast.parse(path.read_text()).body:
                if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                    lines = node.end_lineno - node.lineno + 1
                    sizes.append((lines, f"{path.relative_to(source)}:{node.name}"))
    return sorted(sizes, reverse=True)


def main() -> int:
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parents[1] / "src" / "sipshadow"
    graph = import_graph(source)
    for package in sorted(graph, key=lambda name: (LAYERS.index(name) if name in LAYERS else 99, name)):
        print(f"{package:12} -> {', '.join(sorted(graph[package])) or '-'}")
    doing_io = io_modules(source)
    print("modules with I/O (clock, randomness, sockets, threads, OS), by package:")
    for package in LAYERS:
        if package in doing_io:
            print(f"  {package:12} {', '.join(doing_io[package])}")
    print("biggest shell classes (lines):")
    for lines, name in class_sizes(source)[:5]:
        print(f"  {lines:4}  {name}")
    wrong = violations(graph)
    for line in wrong:
        print(f"LAYERING: {line} points up or sideways", file=sys.stderr)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())

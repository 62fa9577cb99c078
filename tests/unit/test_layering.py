"""What production runs never loads the namespace test bed (DESIGN.md: `net/` never imports
the test bed), however deep the import."""

from __future__ import annotations

import subprocess
import sys

PRODUCTION = (
    "sipshadow.cli", "sipshadow.runtime.serve", "sipshadow.runtime.ha", "sipshadow.runtime.identity",
    "sipshadow.net.vip", "sipshadow.net.accept", "sipshadow.net.silent", "sipshadow.net.nft",
)  # fmt: skip
TEST_BED = ("sipshadow.net.testbed", "sipshadow.net.mirror", "sipshadow.net.faults", "sipshadow.lab")


def test_production_modules_never_import_the_test_bed() -> None:
    code = (
        f"import importlib, sys\nfor name in {PRODUCTION!r}: importlib.import_module(name)\n"
        f"print(sorted(name for name in sys.modules if name.startswith({TEST_BED!r})))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert loaded.stdout.strip() == "[]"

"""A pytest plugin for mutation runs only (`make mutation` loads it with `-p`; `make test` never does).

mutmut runs the whole suite once in its own process, then forks one child per mutant from
that process. Two things would make a child's verdict depend on that first run rather than on
the mutant: the parse memos (`functools.lru_cache`) in `sipshadow.sip`, filled by the original
code, would answer for the mutant; and hypothesis would draw new examples (and replay saved
ones) on each run. So every session starts with every memo of the package empty, and
hypothesis draws the same examples every time with no example database.
"""

from __future__ import annotations

import sys

import pytest
from hypothesis import settings

settings.register_profile("mutation", derandomize=True, database=None, deadline=None)


def clear_memos() -> None:
    """Empty every memo (anything with `cache_clear`) held at module level in `sipshadow`."""
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "sipshadow" or name.startswith("sipshadow.")):
            continue
        for value in list(vars(module).values()):
            cache_clear = getattr(value, "cache_clear", None)
            if callable(cache_clear):
                cache_clear()


def pytest_configure(config: pytest.Config) -> None:
    settings.load_profile("mutation")


def pytest_sessionstart(session: pytest.Session) -> None:
    clear_memos()

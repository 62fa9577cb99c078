"""Counting each message into `Counters`, compiled with the gateway (counters.py stays Python).

A call from the compiled gateway into an interpreted method costs more than the counting
itself, and it happens for every message; these functions are that method's body, compiled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from sipshadow.sip.headers import METHODS

if TYPE_CHECKING:
    from sipshadow.core.counters import Counters

#: The methods counted by name (RFC 3261 and its extensions); any other is counted as "other",
#: so a sender cannot grow the table (or a metric's label set) without bound.
COUNTED_METHODS: Final = METHODS
#: A status's class by its first digit (the parser admits 100-699 only).
_CLASSES: Final = ("0xx", "1xx", "2xx", "3xx", "4xx", "5xx", "6xx")


def count_request(counters: Counters, method: str) -> None:
    """One request that parsed, by method (`COUNTED_METHODS`, else "other")."""
    counters.requests += 1
    name = method if method in COUNTED_METHODS else "other"
    by_method = counters.requests_by_method
    by_method[name] = by_method.get(name, 0) + 1


def count_response(counters: Counters, status: int) -> None:
    """One response that parsed (status 100-699), by class: "1xx" ... "6xx"."""
    counters.responses += 1
    name = _CLASSES[status // 100]
    by_class = counters.responses_by_class
    by_class[name] = by_class.get(name, 0) + 1

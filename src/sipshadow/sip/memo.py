"""Bounded memos of pure functions: a plain dict, emptied when it reaches its limit.

Cheaper than an LRU where most lookups miss (a Via's branch is new in every transaction) and
the hits come soon after the miss (a call's values come back within the call, long before a
clearing). The parse memos, the branch MACs and the IP-literal verdicts all keep their answers
this way; only the function's inputs and outputs are kept, so no replicated state is in them.
"""

from __future__ import annotations

from typing import TypeVar

_Key = TypeVar("_Key")
_Value = TypeVar("_Value")


def remember(memo: dict[_Key, _Value], key: _Key, value: _Value, limit: int) -> _Value:
    """Store `value` under `key` (the memo emptied first if it holds `limit` entries); return it."""
    if len(memo) >= limit:
        memo.clear()
    memo[key] = value
    return value

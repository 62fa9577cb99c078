"""Whole calls through a fresh core, dialogs reaped as they go; prints the RSS growth as JSON.

tests/unit/test_native_build.py runs it on the compiled build: with the dialog table at a
steady few hundred calls, memory must stay flat. (mypyc 1.19 leaked a `bytes + attribute`
result: 2.8 KB a call, which no output comparison can see.)
"""

from __future__ import annotations

import gc
import json
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from core_calls import ALG, MEMBERS, one_call
from sipshadow import _native
from sipshadow.core import Gateway, GatewayConfig, MemberSpec
from sipshadow.core.events import SetClock, TimerExpired
from sipshadow.determinism import SystemEntropy


def rss_kib() -> int:
    gc.collect()
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() // 1024


#: Records on, ended dialogs gone after 0.5 s: the table stays at a few hundred calls.
CONFIG = GatewayConfig(ALG, tuple(MemberSpec(m) for m in MEMBERS), probe_interval_s=0, call_records=True,
                       terminated_linger_s=0.5)  # fmt: skip


def main(calls: int) -> None:
    gateway = Gateway(CONFIG, SystemEntropy(1))
    gateway.handle(SetClock(1_790_000_000.0, 0.0))
    now, warm = 0.0, calls // 4
    start = 0
    for n in range(calls):
        now += 0.05  # Timer C (200 s) passes after 4 000 calls: the expiry heap's stale entries level off
        one_call(gateway, n, now)
        if n % 100 == 0:
            gateway.handle(TimerExpired(now))
        if n == warm:
            start = rss_kib()
    grown = rss_kib() - start
    print(json.dumps({"state": _native.STATE, "calls_measured": calls - warm, "held": len(gateway.table.calls),
                      "rss_growth_kib": grown}))  # fmt: skip


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20000)

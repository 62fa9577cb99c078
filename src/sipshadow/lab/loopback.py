"""`sipshadow lab loopback`: SIPp UAC -> sipshadow -> two SIPp UAS, all on 127.0.0.1.

The main job until the failover experiment exists: a short real load through the ALG,
with SIPp's own summary and the ALG's counters printed at the end.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import msgspec

from sipshadow.lab.alg import AlgProcess
from sipshadow.lab.sipp import SippUac, SippUas, free_port

ALG_CONFIG = "[health]\nprobe_interval_ms = 500\n[status]\ninterval_s = 0.2\n"


def run_loopback(*, calls: int, rate: float, policy: str, out: Path) -> int:
    """Run the load; exit 0 when every call succeeded."""
    out.mkdir(parents=True, exist_ok=True)
    duration_s = calls / rate
    print(f"sipshadow loopback: {calls} calls at {rate:g} calls/s through the ALG ({policy}), logs in {out}")
    with (
        SippUas(out, name="member-a", timeout=duration_s + 60) as member_a,
        SippUas(out, name="member-b", timeout=duration_s + 60) as member_b,
        AlgProcess(
            ("127.0.0.1", free_port()),
            [member_a.address, member_b.address],
            out,
            policy=policy,
            config_text=ALG_CONFIG,
        ) as alg,
    ):
        started = time.monotonic()
        uac = SippUac(alg.listen, out, calls=calls, rate=rate, extra_args=["-nr"], timeout=duration_s + 60)
        result = uac.start().wait()
        elapsed = time.monotonic() - started
        time.sleep(0.5)  # one more status write after the last BYE
        status = alg.status()
    print(f"SIPp UAC: {result.summary()}")
    print(f"wall time {elapsed:.1f} s; ALG per member:")
    for member in status.members:
        print(f"  {member.address}: {member.calls} calls, {member.active_calls} active, up={member.up}")
    every = msgspec.to_builtins(status.counters, str_keys=True) if status.counters is not None else {}
    counters = {key: value for key, value in every.items() if value and key != "calls_per_member"}
    print("ALG counters:", json.dumps(counters))
    ok = result.ok and result.successful_calls == calls
    print("RESULT:", "PASS" if ok else "FAIL", f"({result.successful_calls}/{calls} calls successful)")
    return 0 if ok else 1

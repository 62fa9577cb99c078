"""Replicas are separate processes: the core's outputs and digests must not depend on one.

Python salts `hash()` per process (PYTHONHASHSEED), and set iteration follows it; a decision or
digest that leaned on either would agree with itself inside one process and differ between the
primary and the shadow. So the same events are replayed in two interpreters with different
seeds, and every output and digest must match byte for byte.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from sipshadow.core import Gateway, GatewayConfig, MemberSpec, MessageReceived, TimerExpired
from sipshadow.core.config import POLICIES
from sipshadow.determinism import SystemEntropy
from tests.unit.messages import ALG, CALLER, MEMBERS, request, response_to

ROOT = Path(__file__).parents[2]


def trace() -> str:
    """A digest of every output and state digest over a workload with forks, subscriptions,
    weighted draws, probes and timers, under every policy."""
    summary = hashlib.blake2b(digest_size=16)
    for policy in POLICIES:
        config = GatewayConfig(ALG, tuple(MemberSpec(m, w) for m, w in zip(MEMBERS, (1, 3), strict=True)), policy,
                               probe_interval_s=1.0, probe_misses=2)  # fmt: skip
        gateway = Gateway(config, SystemEntropy(42))
        now = 0.0
        for index in range(40):
            now += 0.25
            call_id = f"c{index % 7}"
            method = ("INVITE", "SUBSCRIBE", "REFER")[index % 3]
            outputs = gateway.handle(MessageReceived(request(method, call_id=call_id, branch=f"z9hG4bK{index}"),
                                                      CALLER, now))  # fmt: skip
            for output in list(outputs):
                if output.destination in MEMBERS:
                    for status, tag in ((180, f"t{index % 2}"), (200, f"f{index % 3}")):
                        outputs += gateway.handle(MessageReceived(response_to(output.data, status, "X", to_tag=tag),
                                                                   output.destination, now))  # fmt: skip
            bye = request("BYE", call_id=call_id, to_tag="f0", cseq=9)
            outputs += gateway.handle(MessageReceived(bye, CALLER, now))
            outputs += gateway.handle(TimerExpired(now))
            for output in outputs:
                summary.update(output.data + repr(output.destination).encode())
            summary.update(gateway.state_digest().to_bytes(8, "little"))
    return summary.hexdigest()


def test_two_processes_with_different_hash_seeds_emit_the_same_bytes_and_digests() -> None:
    results = []
    for seed in ("1", "2"):
        environment = dict(os.environ, PYTHONHASHSEED=seed)
        code = "from tests.unit.test_determinism_across_processes import trace; print(trace())"
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environment, capture_output=True,
                              text=True, timeout=120, check=True)  # fmt: skip
        results.append(done.stdout.strip())
    assert results[0] == results[1] == trace()

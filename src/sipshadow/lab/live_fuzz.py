"""`sipshadow lab fuzz`: mutated SIP from a second client while real calls run through the pair.

The namespace bed runs the pair in tap mode (the shadow replays every datagram from the
mirror, garbage included). First a short SIPp run through the pair, traced (`-trace_msg`),
gives the corpus: what SIPp really put on the wire and received. Then, together:

- SIPp places calls with no retransmissions (-nr) from the client's address for `seconds`;
- the fuzzer (`lab.fuzz`, hypothesis) sends mutated copies of the corpus, each with a Call-ID
  of its own, from a second address in the client's namespace (`FUZZER_ADDRESS`);
- once a second, both nodes' status: the oracle is the shadow's per-entry digest check
  (`divergences`), the nodes' processes (a crash is an exit), and their roles (a takeover
  without a fault is a false one).

Writes `summary.json` and `fuzz.json` (the fuzzer's own report) in `out`. Exit 0 only when no
real call failed, no node crashed or took over, the shadow never diverged and it stayed synced.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sipshadow.lab.bed.testbed import SERVICE_IF
from sipshadow.lab.fuzz import corpus_from_sipp_trace
from sipshadow.lab.netns_lab import NetnsLab
from sipshadow.runtime.status import StatusDocument

#: The fuzzer's own address in the client namespace: a second client beside SIPp's.
FUZZER_ADDRESS = "198.18.0.11"
CALL_MS = 2000
CORPUS_CALLS = 10
HOSTS = ("primary", "shadow")


@dataclass(frozen=True)
class FuzzConfig:
    seconds: float = 60.0
    rate: float = 100.0  #: real calls per second
    fuzz_rate: float = 300.0  #: mutated datagrams per second
    seed: int = 1
    out: Path = Path("runs/fuzz")


def run_live_fuzz(config: FuzzConfig) -> int:
    """The run; returns 0 when the oracle saw nothing wrong (see the module docstring)."""
    out = config.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    with NetnsLab(out / "bed", mode="active") as lab:
        corpus_file = _trace_corpus(lab, out)
        corpus = corpus_from_sipp_trace(corpus_file)
        if not corpus:
            raise RuntimeError(f"SIPp's trace {corpus_file} holds no SIP message")
        tb = lab.testbed
        tb.ip("client", "addr", "add", f"{FUZZER_ADDRESS}/{tb.topology.service_prefixlen}", "dev", SERVICE_IF)
        calls = int(config.rate * config.seconds)
        uac = lab.client_uac(calls, config.rate, call_ms=CALL_MS, timeout=config.seconds + 120).start()
        fuzz_report = out / "fuzz.json"
        fuzzer = subprocess.Popen(
            tb.exec_argv("client", [
                sys.executable, "-m", "sipshadow.lab.fuzz", "--target", f"{lab.service[0]}:{lab.service[1]}",
                "--trace", str(corpus_file), "--seconds", str(config.seconds), "--rate", str(config.fuzz_rate),
                "--seed", str(config.seed), "--source", FUZZER_ADDRESS, "--report", str(fuzz_report),
            ]),
            stdout=subprocess.DEVNULL, stderr=(out / "fuzz.log").open("wb"),
        )  # fmt: skip
        watch = _Watch(lab)
        try:
            while fuzzer.poll() is None or uac.running():
                watch.look()
                time.sleep(1.0)
            result = uac.wait()
        finally:
            if fuzzer.poll() is None:
                fuzzer.kill()
            fuzzer.wait(5)
        watch.look()
        fuzzed = json.loads(fuzz_report.read_text()) if fuzz_report.exists() else {}
        summary = _summary(config, len(corpus), fuzzed, watch, result.successful_calls, result.failed_calls, calls)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0 if summary["ok"] else 1


def _trace_corpus(lab: NetnsLab, out: Path) -> Path:
    """A few real calls through the pair, every message SIPp sent and received traced."""
    trace = out / "corpus_trace.log"
    trace.unlink(missing_ok=True)
    uac = lab.client_uac(CORPUS_CALLS, 10, call_ms=200, extra=("-trace_msg", "-message_file", str(trace)),
                         timeout=30).start()  # fmt: skip
    result = uac.wait()
    if result.failed_calls:
        raise RuntimeError(f"the corpus run failed {result.failed_calls} of {CORPUS_CALLS} calls: the bed is not sound")
    return trace


class _Watch:
    """What the oracle has seen: the last status of each node, crashes, the worst it got."""

    def __init__(self, lab: NetnsLab) -> None:
        self.lab = lab
        self.pids = {host: lab.nodes[host].pid for host in HOSTS}
        self.last: dict[str, StatusDocument] = {}
        self.crashed: set[str] = set()
        #: SIPp callees that exited: what the ALG forwarded broke them (their calls fail then).
        self.members_exited: set[str] = set()
        self.unsynced_looks = 0

    def look(self) -> None:
        for host in HOSTS:
            node = self.lab.nodes[host]
            if node.child.poll() is not None or node.pid != self.pids[host]:
                self.crashed.add(host)
                continue
            try:
                self.last[host] = node.status()
            except (OSError, ValueError):
                continue
        for index, member in enumerate(self.lab.members):
            if not member.running():
                self.members_exited.add(f"member-{index + 1}")
        shadow = self.last.get("shadow")
        if shadow is not None and shadow.ha is not None and not (shadow.ha.shadow and shadow.ha.shadow.synced):
            self.unsynced_looks += 1


def _summary(config: FuzzConfig, corpus: int, fuzzed: dict[str, Any], watch: _Watch, successful: int, failed: int,
             placed: int) -> dict[str, Any]:  # fmt: skip
    primary, shadow = watch.last.get("primary"), watch.last.get("shadow")
    replica = shadow.ha.shadow if shadow is not None and shadow.ha is not None else None
    roles = {host: doc.ha.role if doc.ha is not None else "?" for host, doc in watch.last.items()}
    takeovers = sum(len(doc.ha.takeovers) for doc in watch.last.values() if doc.ha is not None)
    counters = primary.counters if primary is not None else None
    summary: dict[str, Any] = {
        "seconds": config.seconds, "rate": config.rate, "fuzz_rate": config.fuzz_rate, "seed": config.seed,
        "corpus_messages": corpus,
        "fuzz_sent": fuzzed.get("sent", 0), "fuzz_answers": fuzzed.get("answers", {}),
        "fuzz_by_operator": fuzzed.get("sent_by_operator", {}),
        "calls_placed": placed, "calls_successful": successful, "calls_failed": failed,
        "crashes": sorted(watch.crashed), "members_exited": sorted(watch.members_exited), "roles": roles,
        "takeovers": takeovers,
        "divergences": replica.divergences if replica is not None else None,
        "shadow_entries_applied": replica.entries_applied if replica is not None else None,
        "shadow_unsynced_looks": watch.unsynced_looks,
        "primary_malformed_requests": counters.malformed_requests if counters is not None else None,
        "primary_malformed_responses": counters.malformed_responses if counters is not None else None,
        "primary_rejected": counters.rejected if counters is not None else None,
        "primary_internal_errors": primary.internal_errors if primary is not None else None,
    }  # fmt: skip
    summary["ok"] = (
        failed == 0 and not watch.crashed and takeovers == 0 and summary["divergences"] == 0
        and watch.unsynced_looks == 0 and summary["fuzz_sent"] > 0 and roles.get("primary") == "primary"
    )  # fmt: skip
    return summary

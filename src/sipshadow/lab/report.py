"""The experiment's figure (loss ratio against call rate, the paper's marks beside ours) and report."""

from __future__ import annotations

import math
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from sipshadow import __version__

#: Figure 2 of the paper, as the text states it: no HA loses every active call; network-level
#: HA improves on that by 86.38 % and active replication by 93.61 % (loss 13.62 % and 6.39 %).
PAPER_LOSS = {"none": 1.0, "network": 1 - 0.8638, "active": 1 - 0.9361}
LABELS = {"none": "no HA", "network": "network-level HA", "active": "active replication"}
COLORS = {"none": "tab:red", "network": "tab:orange", "active": "tab:green"}
#: How the caller reaches the ALG: UDP, TCP with a connection per call, TCP with one for all.
TRANSPORT_LABELS = {"udp": "UDP", "tcp": "TCP", "tcp1": "TCP, one connection"}
_LINE_STYLES = {"udp": "-", "tcp": ":", "tcp1": "-."}

#: Loss figures per series, then per rate. A series is a mode ("active") or, for a transport
#: other than UDP, "mode/transport" ("active/tcp"): `series_name`, `split_series`.
Table = dict[str, dict[int, dict[str, float]]]


def series_name(mode: str, transport: str) -> str:
    return mode if transport == "udp" else f"{mode}/{transport}"


def split_series(series: str) -> tuple[str, str]:
    mode, _, transport = series.partition("/")
    return mode, transport or "udp"


def series_label(series: str, *, with_udp: bool = False) -> str:
    mode, transport = split_series(series)
    return LABELS[mode] if transport == "udp" and not with_udp else f"{LABELS[mode]} ({TRANSPORT_LABELS[transport]})"


def draw_figure(table: Table, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    several = len({split_series(series)[1] for series in table}) > 1
    drawn_paper: set[str] = set()
    for series, by_rate in table.items():
        mode, transport = split_series(series)
        rates = sorted(by_rate)
        means = [by_rate[r]["mean"] * 100 for r in rates]
        errors = [by_rate[r]["stdev"] * 100 for r in rates]
        axes.errorbar(rates, means, yerr=errors, marker="o", capsize=4, color=COLORS[mode],
                      linestyle=_LINE_STYLES[transport],
                      label=f"sipshadow: {series_label(series, with_udp=several)}")  # fmt: skip
        if mode not in drawn_paper:
            drawn_paper.add(mode)
            axes.axhline(PAPER_LOSS[mode] * 100, linestyle="--", linewidth=1, color=COLORS[mode],
                         label=f"paper: {LABELS[mode]} ({PAPER_LOSS[mode] * 100:.2f} %)")  # fmt: skip
    axes.set_xlabel("call rate (calls/s)")
    axes.set_ylabel("loss ratio: failed / active calls (%)")
    axes.set_title("Primary ALG fails 3 s after the calls start (SIPp, no retransmissions)")
    axes.set_ylim(-5, 105)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="center right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def versions() -> dict[str, str]:
    """The machine and every tool version a result depends on (reports and benchmarks)."""

    def first_line(argv: list[str]) -> str:
        try:
            output = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False).stdout
        except OSError:
            return "not installed"
        return next((line.strip() for line in output.splitlines() if line.strip()), "unknown")

    return {
        "sipshadow": __version__,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpu": f"{cpu_model()} ({os.cpu_count()} cores)",
        "sipp": first_line(["sipp", "-v"]),
        "kamailio": first_line(["kamailio", "-v"]),
        "nft": first_line(["nft", "--version"]),
    }


def records_section(rows: list[dict[str, Any]], store: str) -> list[str]:
    """The call records of every run against SIPp's counts, and what they add up to."""
    order = list(TRANSPORT_LABELS)
    rows = sorted(rows, key=lambda r: (order.index(r["transport"]), list(LABELS).index(r["mode"]), r["rate_cps"],
                                       r["repeat"]))  # fmt: skip
    lines = ["", f"## Call records ({store}: one store per run, shared by both nodes)", "",
             "Expected: calls SIPp placed. Written: records in the store after the run (the journals the nodes left",
             "flushed, as a restarted node does). Duplicates: records beyond one per Call-ID. Missing: calls placed",
             "with no record. Unbilled: calls SIPp completed whose record is missing or has no answer or no BYE.", "",
             "Absorbed: records the store already had when a node wrote them again (a takeover re-issues what the",
             "old primary may not have released); the store keeps one per record identity.", "",
             "| mode | rate (cps) | run | calls lost | expected | written | duplicates | missing | unbilled "
             "| absorbed |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        label = series_label(series_name(r["mode"], r["transport"]), with_udp=len({x["transport"] for x in rows}) > 1)
        lines.append(f"| {label} | {r['rate_cps']} | {r['repeat']} | {r['calls_failed']} | {r['records_expected']} | "
                     f"{r['records_written']} | {r['records_duplicates']} | {r['records_missing']} | "
                     f"{r['records_unbilled']} | {r['records_absorbed']} |")  # fmt: skip
    duplicates = sum(r["records_duplicates"] for r in rows)
    unbilled = sum(r["records_unbilled"] for r in rows)
    active = [r for r in rows if r["mode"] == "active"]
    active_missing = sum(r["records_missing"] for r in active)
    lines += ["", f"- Duplicated records, every mode and run: **{duplicates}**.",
              f"- Completed calls without a complete record, every mode and run: **{unbilled}**.",
              f"- Active replication: {sum(r['records_expected'] for r in active)} calls placed, "
              f"{sum(r['records_written'] for r in active)} records, **{active_missing} missing**.",
              "- Without HA and with network-level HA, the missing records are those of the calls the failure lost:",
              "  the new node never knew them, so nobody can bill them."]  # fmt: skip
    return lines


def write_report(
    path: Path, table: Table, config: dict[str, Any], wall_s: float, errors: list[str], cost: dict[str, Any] | None,
    *, records: list[dict[str, Any]] | None = None,
) -> None:
    lines = [
        "# sipshadow: the paper's Figure 2, reproduced",
        "",
        f"Modes {', '.join(config['modes'])}; transports "
        f"{', '.join(TRANSPORT_LABELS[t] for t in config.get('transports', ['udp']))}; "
        f"rates {', '.join(map(str, config['rates']))} calls/s; calls of "
        f"{config['call_duration_s']:g} s placed for {config['fail_at_s'] + config['after_failure_s']:g} s with SIPp "
        f"`-nr` (no retransmissions); the primary fails ({config['fault']}) {config['fail_at_s']:g} s after the calls "
        f"start; {config['repeat']} runs per point; cluster members: {config['members']}. Wall time {wall_s:.0f} s.",
        "",
        "Active calls = the calls placed that had not completed when the primary failed (those up at the failure",
        "plus those offered after it). Loss ratio = failed / active, as the paper defines it.",
        "",
        "| mode | rate (cps) | runs | loss ratio (mean ± stdev) | paper | median failover (ms) |",
        "|---|---|---|---|---|---|",
    ]
    several = len({split_series(series)[1] for series in table}) > 1
    for series, by_rate in table.items():
        mode = split_series(series)[0]
        for rate, cell in sorted(by_rate.items()):
            failover = "n/a" if math.isnan(cell["failover_ms"]) else f"{cell['failover_ms']:.0f}"
            label = series_label(series, with_udp=several)
            lines.append(
                f"| {label} | {rate} | {cell['runs']:.0f} | {cell['mean'] * 100:.2f} % ± "
                f"{cell['stdev'] * 100:.2f} | {PAPER_LOSS[mode] * 100:.2f} % | {failover} |"
            )
    lines += ["", "## Against the paper", ""]
    for series, by_rate in table.items():
        mode = split_series(series)[0]
        mean = sum(cell["mean"] for cell in by_rate.values()) / len(by_rate)
        lines.append(f"- {series_label(series, with_udp=several)}: mean loss {mean * 100:.2f} % over all rates; "
                     f"the paper: {PAPER_LOSS[mode] * 100:.2f} %.")  # fmt: skip
    offered_s = config["fail_at_s"] + config["after_failure_s"]
    if "network" in table and config["call_duration_s"] >= config["fail_at_s"]:
        lines += ["", f"Network-level HA loses exactly the calls that were up at the failure: here "
                  f"{config['fail_at_s']:g} s of the {offered_s:g} s of offered calls, "
                  f"{config['fail_at_s'] / offered_s * 100:.1f} % of the active calls (plus any call whose message "
                  "fell in the detection window); the paper's network-level HA lost 13.62 %, and its active "
                  "replication still 6.39 %."]  # fmt: skip
    if cost:
        lines += ["", "## Failure-free cost (no HA vs active replication, side by side)", ""]
        lines += ["| mode | highest zero-failure rate (cps) | median response time (ms) |", "|---|---|---|"]
        for mode, cell in cost.items():
            rate, median = cell["max_zero_failure_cps"], cell["median_response_ms"]
            lines.append(f"| {LABELS[mode]} | {rate} (ladder {cell['ladder']}) | {median:.3f} |")
        lines += ["", "Response time: OPTIONS round trips from the client namespace to the VIP, answered by the",
                  "ALG's core (so they pass through output commit), during a steady SIPp load."]  # fmt: skip
    if records:
        lines += records_section(records, config.get("records", "sqlite"))
    if errors:
        lines += ["", "## Runs that failed", "", *[f"- {error}" for error in errors]]
    lines += ["", "## Machine and versions", ""]
    lines += [f"- {name}: {value}" for name, value in versions().items()]
    lines += ["", "![loss ratio against call rate](figure.png)", ""]
    path.write_text("\n".join(lines))

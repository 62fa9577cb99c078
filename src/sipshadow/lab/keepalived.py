"""keepalived as the failure detector and VIP owner of a sipshadow pair: its config and its process.

Operators who already run keepalived can let VRRP decide which node is active: keepalived holds
the VIP and calls `sipshadow ctl ... takeover` / `... standby` from its notify hooks. This module
writes the keepalived.conf of one node and runs keepalived in the foreground (in a test-bed
namespace), so the lab can measure what failover that gives on its own (docs/keepalived.md).

Timing, from RFC 5798 (VRRPv3), which keepalived follows:
- the master sends an advertisement every `advert_int`; VRRPv3 carries it in centiseconds in a
  12-bit field, so 0.01 s to 40.95 s in steps of 0.01 s (VRRPv2 carries whole seconds, 1-255);
- a backup declares the master dead after Master_Down_Interval = 3 x advert_int + Skew_Time,
  Skew_Time = (256 - priority) x advert_int / 256, i.e. 3.6 advert intervals at priority 100;
- on becoming master it adds the VIP and sends a burst of gratuitous ARPs straight away
  (`vrrp_garp_master_repeat` of them); `vrrp_garp_master_delay` seconds later it sends a
  second burst, and every `vrrp_garp_master_refresh` seconds (0: never) it refreshes them
  while it stays master. Only the first burst is on the failover path; the others repair
  ARP caches that missed it or were overwritten afterwards.

Standard library only, like the rest of the lab.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

__all__ = [
    "DEFAULT_ADVERT_INT_S",
    "GARP_MASTER_DELAY_S",
    "GARP_MASTER_REFRESH_S",
    "GARP_MASTER_REPEAT",
    "V3_MAX_ADVERT_INT_S",
    "V3_MIN_ADVERT_INT_S",
    "crash_keepalived",
    "keepalived_binary",
    "master_down_interval_s",
    "pid_files",
    "render_config",
    "start_keepalived",
    "stop_keepalived",
]

#: VRRPv3's advertisement interval field counts centiseconds in 12 bits (RFC 5798 section 5.2.7).
V3_MIN_ADVERT_INT_S = 0.01
V3_MAX_ADVERT_INT_S = 40.95
#: The interval the lab and the operator's guide use: VRRPv3's floor. A backup of priority 100 then
#: declares the master dead after 3.6 intervals of silence (36 ms), the RFC's own timer, not a
#: shortened one (keepalived's `down_timer_adverts` could cut it to one interval, which turns a
#: single late advert into a failover; we leave it at 3). On the 2-core lab box, runs of 20-60 s
#: with 10 ms adverts saw no false failover, idle, during a unit-test run, or with 16 CPU-bound
#: processes competing (with and without max_auto_priority, below). Where a node can be paused
#: for tens of ms (a VM on a busy hypervisor, live migration), such a pause is a failover at this
#: setting: raise it there (docs/keepalived.md).
DEFAULT_ADVERT_INT_S = 0.01
#: Gratuitous ARPs sent back to back on becoming master. More than one, so a single lost frame
#: does not leave the client's ARP cache on the dead node; the frames are ~60 bytes.
GARP_MASTER_REPEAT = 3
#: The second burst, after 1 s instead of keepalived's default 5 s: a cache that missed the first
#: burst (or that the old master's kernel answered in the meantime, see below) is repaired sooner.
GARP_MASTER_DELAY_S = 1
#: Refresh while master, every second (keepalived's resolution is seconds; the default 0 never
#: refreshes). A SIGKILLed keepalived leaves the VIP on its node, whose kernel keeps answering ARP
#: for it: a client that re-resolves may pick that node again. The refresh bounds such a detour
#: to about a second. The cost is one broadcast frame per second.
GARP_MASTER_REFRESH_S = 1

KEEPALIVED = "keepalived"
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_UNSAFE_IN_QUOTES = re.compile(r'["\n\\]')


def keepalived_binary() -> str | None:
    """Path of the keepalived binary (Debian installs it in /usr/sbin), or None."""
    return shutil.which(KEEPALIVED) or shutil.which(KEEPALIVED, path="/usr/sbin:/sbin:/usr/local/sbin")


def master_down_interval_s(advert_int_s: float, priority: int, version: int = 3) -> float:
    """How long a backup of this priority waits without an advert before it becomes master.

    VRRPv3 (RFC 5798): 3 x interval + (256 - priority) x interval / 256.
    VRRPv2 (RFC 3768): 3 x interval + (256 - priority) / 256 seconds.
    """
    skew = (256 - priority) * (advert_int_s if version == 3 else 1.0) / 256
    return 3 * advert_int_s + skew


def _advert_int_text(advert_int_s: float, version: int) -> str:
    if version == 3:
        centis = Decimal(str(advert_int_s)) * 100
        if centis != centis.to_integral_value() or not 1 <= centis <= 4095:
            raise ValueError(f"VRRPv3 advert_int must be 0.01-40.95 s in steps of 0.01 s, not {advert_int_s}")
        return f"{advert_int_s:.2f}"
    if version == 2:
        if advert_int_s != int(advert_int_s) or not 1 <= advert_int_s <= 255:
            # keepalived rounds a fractional VRRPv2 interval to whole seconds; refuse rather than surprise
            raise ValueError(f"VRRPv2 advert_int must be whole seconds 1-255, not {advert_int_s}")
        return str(int(advert_int_s))
    raise ValueError(f"VRRP version must be 2 or 3, not {version}")


def _quoted(command: str, what: str) -> str:
    if not command.strip() or _UNSAFE_IN_QUOTES.search(command):
        raise ValueError(f"{what} must be a non-empty command without quotes, backslashes or newlines: {command!r}")
    return f'"{command}"'


def render_config(
    *,
    instance: str,
    interface: str,
    vip: str,
    prefix_len: int,
    router_id: int,
    priority: int,
    advert_int_s: float,
    peer: str | None,
    notify_master: str | None = None,
    notify_backup: str | None = None,
    notify_fault: str | None = None,
    notify_fifo_script: str | None = None,
    version: int = 3,
    nopreempt: bool = True,
    state_dir: Path,
    src: str | None = None,
    node: str | None = None,
    garp_master_repeat: int = GARP_MASTER_REPEAT,
    garp_master_delay_s: int = GARP_MASTER_DELAY_S,
    garp_master_refresh_s: int = GARP_MASTER_REFRESH_S,
) -> str:
    """keepalived.conf for one node of the pair.

    `instance` names the vrrp_instance; `router_id` is its virtual_router_id (VRID, 1-255), the same
    on both nodes. `peer` is the other node's address: with it, adverts go unicast from `src` (by
    default keepalived picks the interface's primary address) to the peer, for networks without
    multicast (most clouds). `node` is the global router_id, a name for this node in keepalived's
    logs (default: `<instance>-<priority>`). `state_dir` receives keepalived's temporary config copy
    and (with `start_keepalived`) its pid files, so two keepalived processes on one host never share one.
    The notify commands run as root; they must not contain double quotes. keepalived forks each
    hook and does not wait, so two changes close together can reach the node out of order;
    `notify_fifo_script` (`sipshadow ctl keepalived-fifo`) instead reads every change, in order,
    from `state_dir`/vrrp.fifo (keepalived appends the FIFO's path to the command). Give either
    the FIFO reader or hooks.
    """
    hooks = {"notify_master": notify_master, "notify_backup": notify_backup, "notify_fault": notify_fault}
    if (notify_fifo_script is None) == (not any(hooks.values())):
        raise ValueError("give notify_fifo_script or the notify_* hooks, one of the two")
    if not _NAME_RE.match(instance):
        raise ValueError(f"instance {instance!r} must be 1-64 chars of [A-Za-z0-9_.-]")
    node = node or f"{instance}-{priority}"
    if not _NAME_RE.match(node):
        raise ValueError(f"node {node!r} must be 1-64 chars of [A-Za-z0-9_.-]")
    if not _NAME_RE.match(interface) or len(interface) > 15:
        raise ValueError(f"interface {interface!r} is not an interface name")
    if not 1 <= router_id <= 255:
        raise ValueError(f"virtual router id must be 1-255, not {router_id}")
    if not 1 <= priority <= 254:
        raise ValueError(f"priority must be 1-254 (255 means address owner and never waits), not {priority}")
    address = ipaddress.IPv4Interface(f"{vip}/{prefix_len}")  # validates both
    for other in (peer, src):
        if other is not None:
            ipaddress.IPv4Address(other)
    if not 0 <= garp_master_delay_s <= 86400 or not 0 <= garp_master_refresh_s <= 86400:
        raise ValueError("GARP delays are whole seconds, 0-86400")
    if not 1 <= garp_master_repeat <= 255:
        raise ValueError("garp_master_repeat must be 1-255")
    advert = _advert_int_text(advert_int_s, version)
    down_s = master_down_interval_s(advert_int_s, priority, version)
    state_dir = Path(state_dir).resolve()

    lines = [
        f"# keepalived.conf for {node}: written by sipshadow.lab.keepalived, do not edit by hand",
        "global_defs {",
        f"    router_id {node}",
        # notify scripts run as root (sipshadow's control socket is root's); without this keepalived
        # runs them as `keepalived_script` if that user exists, else as root with a warning
        "    script_user root",
        # refuse a notify script that a non-root user could replace: the checks cover every
        # directory of its path, so keep the commands in root-owned directories
        "    enable_script_security",
        # keepalived's copy of this file goes to state_dir, like its pid files and SIGUSR1 dumps
        # (start_keepalived): two keepalived processes on one host (the lab runs both nodes on one
        # kernel) must not share /run/keepalived.pid or /tmp/keepalived.data
        f"    tmp_config_directory {state_dir}",
        f"    vrrp_version {version}",
        # keepalived is an ordinary process; when it finds itself running more than 5 ms after a
        # timer was due it moves its VRRP process to realtime scheduling, one priority step per late
        # wake-up (keepalived's own startup notice recommends this), so a busy host cannot starve the
        # adverts into a false failover. RLIMIT_RTTIME (vrrp_rlimit_rttime, 10 ms of CPU without
        # blocking) guards against a spinning keepalived; we saw it fire once, on resuming a VRRP
        # process that had been SIGSTOPped for seconds: the parent respawned it as BACKUP.
        "    max_auto_priority",
        "    min_auto_priority_delay 5000",
        # only the first burst is on the failover path; see GARP_MASTER_* in this module
        f"    vrrp_garp_master_repeat {garp_master_repeat}",
        f"    vrrp_garp_master_delay {garp_master_delay_s}",
        f"    vrrp_garp_master_refresh {garp_master_refresh_s}",
        "    vrrp_garp_master_refresh_repeat 1",
        # two masters meet (a partition heals, a paused master resumes): the one that yields sends
        # one more advert first, so the winner re-sends its GARPs (vrrp_garp_lower_prio_repeat) and
        # caches that last heard the loser's GARPs follow the winner
        "    vrrp_higher_prio_send_advert true",
    ]
    if notify_fifo_script is not None:
        # one reader, started by keepalived, gets every state change in order (runtime.keepalived_fifo)
        lines += [
            f"    vrrp_notify_fifo {state_dir / 'vrrp.fifo'}",
            f"    vrrp_notify_fifo_script {_quoted(notify_fifo_script, 'notify_fifo_script')}",
        ]
    lines += [
        "}",
        "",
        f"vrrp_instance {instance} {{",
        # Both nodes start BACKUP. Neither hears an advert, so each waits its Master_Down_Interval,
        # which is shorter for the higher priority (smaller skew): if both start together that node
        # becomes master once and its adverts keep the other one backup. "Together" means within
        # the skew difference, (difference of priorities) / 256 x advert_int, 2 ms for 150 and 100 at
        # 10 ms adverts: otherwise the node that started first wins, and nopreempt keeps it master.
        # Start the intended master first.
        # With nopreempt a recovered higher-priority node does NOT take the VIP back from the lower
        # one that took over: a failback would be a second outage for the calls, and the returning
        # node has no replicated state yet. Moving back is the operator's decision (restart
        # keepalived on the current master). nopreempt only works when the configured state is
        # BACKUP, which is why MASTER is never written here. It does not hold back a master that
        # was paused (SIGSTOP, a frozen VM) rather than dead: on resuming it still is MASTER, and
        # of two masters the higher priority stays; the node that took over goes BACKUP again.
        "    state BACKUP",
        f"    interface {interface}",
        f"    virtual_router_id {router_id}",
        f"    priority {priority}",
        f"    advert_int {advert}  # a backup of this priority takes over after {down_s * 1000:.0f} ms of silence",
    ]
    if nopreempt:
        lines.append("    nopreempt")
    if peer is not None:
        if src is not None:
            lines.append(f"    unicast_src_ip {src}")
        lines += [
            "    unicast_peer {",
            f"        {peer}",
            "    }",
            # ignore adverts from anyone but the peer
            "    check_unicast_src",
        ]
    lines += [
        "    virtual_ipaddress {",
        f"        {address.ip}/{prefix_len} dev {interface}",
        "    }",
        *(f"    {hook} {_quoted(command, hook)}" for hook, command in hooks.items() if command is not None),
        "}",
        "",
    ]
    return "\n".join(lines)


def pid_files(state_dir: Path) -> dict[str, Path]:
    """The pid files start_keepalived asks for, by keepalived's option name."""
    state_dir = Path(state_dir)
    return {
        "pid": state_dir / "keepalived.pid",
        "vrrp_pid": state_dir / "vrrp.pid",
        "checkers_pid": state_dir / "checkers.pid",
        "bfd_pid": state_dir / "bfd.pid",
    }


def start_keepalived(
    run_in_namespace: Callable[[list[str]], list[str]],
    config_path: Path,
    state_dir: Path,
    log_path: Path,
) -> subprocess.Popen[bytes]:
    """Start keepalived's VRRP subsystem in the foreground; its console log goes to log_path.

    `run_in_namespace` turns an argv into one that runs inside the node's namespace (the test bed's
    `exec_argv`, partially applied). `ip netns exec` execs in place, so the Popen's pid is
    keepalived's parent process; its VRRP child is forked into the same process group (the
    child's own session started here), which is what stop_keepalived and crash_keepalived signal.
    """
    binary = keepalived_binary()
    if binary is None:
        raise FileNotFoundError("keepalived is not installed (Debian: apt-get install keepalived)")
    state_dir = Path(state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    pids = pid_files(state_dir)
    argv = [
        binary,
        "--dont-fork",  # stay in the foreground: the Popen is keepalived itself
        "--log-console",  # log to stderr, i.e. log_path...
        "--no-syslog",  # ...and not to the host's syslog
        "--log-detail",
        "--vrrp",  # VRRP only: no health checkers, no BFD
        f"--use-file={Path(config_path).resolve()}",
        *(f"--{option}={path}" for option, path in pids.items()),
    ]
    env = {**os.environ, "TMPDIR": str(state_dir)}  # SIGUSR1/2 dumps and other scratch files
    with Path(log_path).open("ab") as log:
        return subprocess.Popen(
            run_in_namespace(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def _group_pids(group: int) -> list[int]:
    """Live (not zombie) pids of the process group: a zombie holds no socket and no address, and an
    orphaned one waits for whatever reaps orphans here, which can take a second."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == group:  # state, pgrp
            pids.append(int(entry))
    return pids


def _kill_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def _reap(proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """Wait for keepalived and everything in its group to end; True when they did."""
    deadline = time.monotonic() + timeout_s
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(max(0.0, deadline - time.monotonic()))
    while _group_pids(proc.pid) and time.monotonic() < deadline:  # children re-parented to init
        time.sleep(0.01)
    return proc.poll() is not None and not _group_pids(proc.pid)


def stop_keepalived(proc: subprocess.Popen[bytes], timeout_s: float = 5.0) -> int | None:
    """Stop keepalived as an operator would (SIGTERM: it sends a priority-0 advert and drops the VIP,
    so the backup takes over after its Skew_Time, a few ms); SIGKILL what is left after timeout_s.
    Idempotent; the exit code."""
    if proc.poll() is None:
        _kill_group(proc, signal.SIGTERM)
    if not _reap(proc, timeout_s):
        _kill_group(proc, signal.SIGKILL)
        _reap(proc, timeout_s)
    return proc.returncode


def crash_keepalived(proc: subprocess.Popen[bytes], timeout_s: float = 5.0) -> int | None:
    """SIGKILL keepalived's parent and VRRP child at once, as a crash would; the exit code.

    Killing only the parent is not a crash: the VRRP child has its parent-death signal set to
    SIGTERM and shuts down cleanly (priority-0 advert, VIP removed). Killed together, neither
    says goodbye: the backup waits out its Master_Down_Interval and the VIP stays on this node.
    """
    _kill_group(proc, signal.SIGKILL)
    _reap(proc, timeout_s)
    return proc.returncode

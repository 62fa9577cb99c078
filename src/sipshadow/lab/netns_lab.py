"""The paper's test bed, on network namespaces: client, primary, shadow, members, a switch.

Brings up the `lab.bed.testbed` namespaces and the port-mirror tap, runs SIPp callees in the
member namespaces and the two sipshadow nodes (tap input, nftables silent mode, VIP takeover
by gratuitous ARP) in theirs, and offers the faults: kill, crash (links down), partition.
Everything is torn down on `down()`, also after a failure (use it as a context manager).
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sipshadow.lab.alg import AlgProcess, serves_as_primary
from sipshadow.lab.bed import faults, mirror
from sipshadow.lab.bed.testbed import SERVICE_IF, Testbed, Topology
from sipshadow.lab.kamailio import KamailioProcess
from sipshadow.lab.sipp import SippUac, SippUas
from sipshadow.runtime.status import TakeoverRecord

SIP_PORT = 5060
REPLICATION_PORT = 7000
ARBITER_PORT = 7001
FAULTS = ("kill", "crash", "partition")
MEMBER_KINDS = ("sipp", "kamailio")
CALLEE_PORT = 5070

NODE_CONFIG = """\
[health]
probe_interval_ms = 500
[status]
interval_s = 0.05
[control]
socket = "{control}"
[replication]
role = "{role}"
mode = "{mode}"
listen = "{own}:{replication_port}"
peer = "{peer}:{replication_port}"
arbiter_listen = "{own_service}:{arbiter_port}"
arbiter_peer = "{peer_service}:{arbiter_port}"
key = "{key}"
input = "tap"
vip_interface = "{interface}"
heartbeat_interval_ms = {heartbeat_interval_ms}
heartbeat_misses = {heartbeat_misses}
detector = "{detector}"
"""


class NetnsLab:
    """One test bed with its SIPp members and sipshadow nodes; `mode` is active, network or none."""

    def __init__(
        self,
        workdir: Path,
        *,
        mode: str = "active",
        topology: Topology | None = None,
        heartbeat_interval_ms: int = 10,
        heartbeat_misses: int = 4,
        members: str = "sipp",
        member_transport: str = "udp",
        detector: str = "heartbeat",
        records: str | None = None,
    ) -> None:
        if members not in MEMBER_KINDS:
            raise ValueError(f"members must be one of {', '.join(MEMBER_KINDS)}")
        if member_transport not in ("udp", "tcp") or (member_transport == "tcp" and members != "sipp"):
            raise ValueError("member_transport must be udp, or tcp with SIPp members")
        self.member_kind = members
        #: How the ALG reaches its members: "tcp" makes each SIPp member listen on TCP (-t t1).
        self.member_transport = member_transport
        self.workdir = workdir
        self.mode = mode
        self.testbed = Testbed(topology or Topology())
        self.topology = self.testbed.topology
        self.key = secrets.token_hex(16)
        self.heartbeat = (heartbeat_interval_ms, heartbeat_misses)
        self.members: list[SippUas] = []
        self.proxies: list[KamailioProcess] = []
        self.nodes: dict[str, AlgProcess] = {}
        #: "keepalived": keepalived (VRRPv3, 10 ms adverts) owns the VIP and orders the nodes
        #: through `sipshadow ctl takeover | standby`; its processes by host.
        self.detector = detector
        self.keepalived: dict[str, subprocess.Popen[bytes]] = {}
        #: Where both nodes write call records (a SQLite path or a PostgreSQL URL), or None.
        self.records = records

    @property
    def service(self) -> tuple[str, int]:
        return self.topology.vip, SIP_PORT

    @property
    def member_addresses(self) -> list[tuple[str, int]]:
        return [(address, SIP_PORT) for address in self.topology.member_addresses]

    @property
    def member_uris(self) -> list[tuple[str, int] | str]:
        """The members as the ALG is given them: HOST:PORT, or a SIP URI naming TCP."""
        if self.member_transport == "udp":
            return list(self.member_addresses)
        return [f"sip:{host}:{port};transport=tcp" for host, port in self.member_addresses]

    def node_config(self, host: str, role: str) -> str:
        peer = "shadow" if host == "primary" else "primary"
        cdr = f'[cdr]\nstore = "{self.records}"\njournal = "{self.journal_of(host)}"\n' if self.records else ""
        return cdr + NODE_CONFIG.format(
            role=role, mode=self.mode, key=self.key, interface=SERVICE_IF,
            own=self.topology.replication_address_of(host), peer=self.topology.replication_address_of(peer),
            own_service=self.topology.address_of(host), peer_service=self.topology.address_of(peer),
            replication_port=REPLICATION_PORT, arbiter_port=ARBITER_PORT,
            heartbeat_interval_ms=self.heartbeat[0], heartbeat_misses=self.heartbeat[1],
            control=self.control_socket(host), detector=self.detector,
        )  # fmt: skip

    def journal_of(self, host: str) -> Path:
        """The node's call-record journal (its own: one writer per journal)."""
        return self.workdir / f"records-{host}.journal"

    def flush_records(self) -> tuple[int, int]:
        """After `down`: what the nodes' journals still hold into the store, as each node would
        at its next start (a crashed or killed node left its journal): (written, duplicates).
        Raises StoreError or OSError when the store does not take them."""
        from sipshadow.records.export import flush
        from sipshadow.records.stores import open_store

        written = duplicates = 0
        for host in ("primary", "shadow"):
            journal = self.journal_of(host)
            if self.records and journal.exists() and journal.stat().st_size:
                new, old, left = flush(open_store(self.records), journal)
                if left:
                    raise OSError(f"{journal}: {left} bytes the store did not take")
                written, duplicates = written + new, duplicates + old
        return written, duplicates

    def records_absorbed(self) -> int:
        """Records the store already had when the nodes wrote them, from their last status files."""
        absorbed = 0
        for node in self.nodes.values():
            with contextlib.suppress(OSError, ValueError):
                records = node.status().records
                absorbed += records.duplicates if records is not None else 0
        return absorbed

    def control_socket(self, host: str) -> Path:
        """The node's control socket (a file: reachable from outside its namespace)."""
        return self.workdir / f"control-{host}.sock"

    def _node(self, host: str, role: str, ready: str) -> AlgProcess:
        return AlgProcess(
            self.service, self.member_uris, self.workdir / host, config_text=self.node_config(host, role),
            ready=ready, netns=self.testbed.ns_name(host),
        )  # fmt: skip

    def up(self) -> NetnsLab:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.testbed.up()
        mirror.install_tap(self.testbed)
        for index, member in enumerate(self.topology.members):
            self._start_member(index, member)
        if self.detector == "keepalived":
            return self._up_by_keepalived()
        self.nodes["primary"] = self._node("primary", "primary", "primary").start()
        if self.mode != "none":
            self.nodes["shadow"] = self._node("shadow", "shadow", "shadow" if self.mode == "active" else "standby")
            self.nodes["shadow"].start()
        return self

    def _up_by_keepalived(self) -> NetnsLab:
        """keepalived elects: both nodes start as shadows; the primary host's keepalived, started
        first (its nopreempt then keeps it MASTER), makes its node take over; the other follows."""
        hosts = ("primary", "shadow") if self.mode != "none" else ("primary",)
        for host in hosts:
            self.nodes[host] = self._node(host, "shadow", "none").start()
        self.wait(lambda: all(self.control_socket(host).exists() for host in hosts), "the nodes' control sockets")
        self.start_keepalived("primary", wait_for="MASTER")
        self.wait(lambda: self.role_of("primary") == "primary", "keepalived's MASTER to make its node serve")
        if self.mode == "active":
            self.wait(lambda: self.synced("shadow"), "the shadow to sync")
        if self.mode != "none":
            self.start_keepalived("shadow", wait_for="BACKUP")
        return self

    @staticmethod
    def wait(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
        """Poll `condition` every 20 ms; TimeoutError naming `what` after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout_s:g} s for {what}")
            time.sleep(0.02)

    def synced(self, host: str) -> bool:
        """Whether the node on `host` is a shadow in sync with its primary."""
        try:
            ha = self.nodes[host].status().ha
        except (OSError, ValueError):
            return False
        return ha is not None and ha.shadow is not None and ha.shadow.synced

    # -- keepalived as the detector -----------------------------------------------------------

    def keepalived_log(self, host: str) -> Path:
        return self.workdir / f"keepalived-{host}" / "keepalived.log"

    def start_keepalived(self, host: str, wait_for: str = "BACKUP", timeout_s: float = 10.0) -> None:
        """keepalived in `host`'s namespace for the VIP (priority 150 on the primary host, 100 on
        the other), its FIFO reader (`ctl keepalived-fifo`) ordering the node's takeover and standby
        in the order of keepalived's state changes; returns once its
        log says it entered `wait_for` state."""
        from sipshadow.lab import keepalived as ka

        peer = "shadow" if host == "primary" else "primary"
        directory = self.workdir / f"keepalived-{host}"
        directory.mkdir(parents=True, exist_ok=True)
        reader = directory / "notify.sh"  # a script, so that every change and answer lands in notify.log
        reader.write_text(f"#!/bin/sh\nexec {sys.executable} -m sipshadow.cli ctl --socket {self.control_socket(host)} "
                          f"keepalived-fifo --instance sipshadow \"$@\" >> {directory}/notify.log 2>&1\n")  # fmt: skip
        reader.chmod(0o755)
        config = ka.render_config(
            instance="sipshadow", interface=SERVICE_IF, vip=self.topology.vip, prefix_len=32, router_id=51,
            priority=150 if host == "primary" else 100, advert_int_s=ka.DEFAULT_ADVERT_INT_S,
            peer=self.topology.address_of(peer), src=self.topology.address_of(host), node=f"sipshadow-{host}",
            notify_fifo_script=str(reader), state_dir=directory,
        )  # fmt: skip
        config_path = directory / "keepalived.conf"
        config_path.write_text(config)
        log = self.keepalived_log(host)
        seen = log.read_text().count(f"Entering {wait_for} STATE") if log.exists() else 0
        self.keepalived[host] = ka.start_keepalived(
            lambda argv: self.testbed.exec_argv(host, argv), config_path, directory, log
        )
        deadline = time.monotonic() + timeout_s
        while log.read_text().count(f"Entering {wait_for} STATE") <= seen:
            if time.monotonic() > deadline:
                raise TimeoutError(f"keepalived on {host} did not enter {wait_for} within {timeout_s} s")
            time.sleep(0.02)

    def stop_keepalived(self, host: str) -> None:
        """Stop keepalived on `host` (SIGTERM: it drops the VIP and sends a priority-0 advert)."""
        from sipshadow.lab import keepalived as ka

        process = self.keepalived.pop(host, None)
        if process is not None:
            ka.stop_keepalived(process)

    def _start_member(self, index: int, member: str) -> None:
        """A SIPp callee, alone (it is the member) or behind a Kamailio proxy (the paper's cluster)."""
        address, netns = self.topology.address_of(member), self.testbed.ns_name(member)
        callee_port = SIP_PORT if self.member_kind == "sipp" else CALLEE_PORT
        uas = SippUas(self.workdir, name=f"member-{index + 1}", host=address, port=callee_port, netns=netns,
                      timeout=3600, transport="t1" if self.member_transport == "tcp" else "u1")  # fmt: skip
        self.members.append(uas.start())
        if self.member_kind == "kamailio":
            proxy = KamailioProcess((address, SIP_PORT), [(address, CALLEE_PORT)], self.workdir / f"proxy-{index + 1}",
                                    workers=1, shm_mb=256, netns=netns)  # fmt: skip
            proxy.start()
            self.proxies.append(proxy)

    def client_uac(
        self, calls: int, rate: float, *, call_ms: int = 0, extra: tuple[str, ...] = (), **kw: Any
    ) -> SippUac:
        """A SIPp UAC in the client namespace calling the VIP (not started)."""
        args = ["-nr", *extra] + (["-d", str(call_ms)] if call_ms else [])
        return SippUac(
            self.service, self.workdir, calls=calls, rate=rate, host=self.topology.client, local_port=SIP_PORT,
            netns=self.testbed.ns_name("client"), extra_args=args, **kw,
        )  # fmt: skip

    def fail(self, how: str) -> float:
        """Inject a fault into the primary; returns the monotonic time it happened."""
        if how == "kill":
            self.nodes["primary"].kill()
        elif how == "crash":
            faults.crash(self.testbed, "primary")
        elif how == "partition":
            faults.partition(self.testbed)
        else:
            raise ValueError(f"unknown fault {how!r}; expected one of {', '.join(FAULTS)}")
        return time.monotonic()

    def role_of(self, host: str) -> str:
        try:
            ha = self.nodes[host].status().ha
        except (OSError, ValueError):
            return "unknown"
        return ha.role if ha is not None else "unknown"

    def wait_for_takeover(self, timeout_s: float = 5.0) -> TakeoverRecord:
        deadline = time.monotonic() + timeout_s
        while self.role_of("shadow") != "primary":
            if time.monotonic() > deadline:
                raise TimeoutError(f"the shadow did not take over within {timeout_s} s")
            time.sleep(0.01)
        ha = self.nodes["shadow"].status().ha
        assert ha is not None  # it just said it was the primary
        return ha.takeovers[-1]

    def run_in(self, host: str, *argv: str) -> str:
        return self.testbed.run(host, list(argv))

    def start_node(self, host: str, role: str = "shadow") -> AlgProcess:
        """(Re)start the node on `host`; as the shadow, it is ready once in sync."""
        self.nodes[host] = self._node(host, role, "shadow" if role == "shadow" else "primary").start()
        return self.nodes[host]

    def down(self) -> None:
        for host in list(self.keepalived):
            with contextlib.suppress(Exception):
                self.stop_keepalived(host)
        # the non-serving node first: a primary stopped while its shadow runs hands the service over
        for node in sorted(self.nodes.values(), key=serves_as_primary):
            with contextlib.suppress(Exception):
                node.stop(timeout_s=2.0)
        for proxy in self.proxies:
            with contextlib.suppress(Exception):
                proxy.stop()
        for member in self.members:
            with contextlib.suppress(Exception):
                member.stop()
        self.testbed.down()

    def __enter__(self) -> NetnsLab:
        try:
            return self.up()
        except BaseException:
            self.down()
            raise

    def __exit__(self, *exc: object) -> None:
        self.down()


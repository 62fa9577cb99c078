"""A network-namespace test bed, so HA tests run real kernels' paths without touching the host's network.

One namespace per host (client, primary, shadow, members) plus a switch namespace holding a Linux
bridge. Every host has a service interface (`svc0`) cabled to a bridge port (`sw-<host>`); the
primary and the shadow also share a direct replication/heartbeat link (`rep0` at both ends).
Namespace names start with a per-run prefix; nothing is ever created in the caller's namespace
(veth pairs are created inside the switch namespace with their peer placed straight into the host's).
"""

from __future__ import annotations

import atexit
import ipaddress
import os
import re
import secrets
import subprocess
import time
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import TracebackType
from typing import Any

from sipshadow.lab.process import in_namespace, sigkill

NETNS_DIR = Path("/run/netns")
ALLOWED_NETWORK = ipaddress.IPv4Network("198.18.0.0/24")
SERVICE_IF = "svc0"
REPLICATION_IF = "rep0"
BRIDGE = "br0"
SWITCH = "switch"
PAIR = ("primary", "shadow")
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{1,9}$")
_HOST_SYSCTLS = ("net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
_SWITCH_SYSCTLS = (
    *_HOST_SYSCTLS,
    "net.bridge.bridge-nf-call-iptables=0",
    "net.bridge.bridge-nf-call-ip6tables=0",
    "net.bridge.bridge-nf-call-arptables=0",
)


class CommandError(RuntimeError):
    """A set-up command failed; carries its argv and stderr."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        super().__init__(f"{' '.join(argv)} exited {returncode}: {stderr.strip()}")
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr


def run_checked(argv: Sequence[str], *, input: str | None = None, timeout: float = 20.0) -> str:
    """Run argv (never through a shell); return stdout or raise CommandError with stderr."""
    proc = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise CommandError(argv, proc.returncode, proc.stderr)
    return proc.stdout


def run_quiet(argv: Sequence[str], *, input: str | None = None, timeout: float = 20.0) -> bool:
    """Best-effort run of argv (for undoing things that may already be gone); return success."""
    proc = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout, check=False)
    return proc.returncode == 0


def run_all(commands: Iterable[tuple[Sequence[str], str | None]], *, timeout: float = 20.0) -> None:
    """Run independent commands concurrently; raise the first failure after all have finished."""
    started = [
        (
            argv,
            subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            ),
            stdin,
        )
        for argv, stdin in commands
    ]
    errors: list[CommandError] = []
    for argv, proc, stdin in started:
        _, stderr = proc.communicate(stdin, timeout=timeout)
        if proc.returncode != 0:
            errors.append(CommandError(argv, proc.returncode, stderr))
    if errors:
        raise errors[0]


def new_prefix() -> str:
    """A fresh per-run prefix: `ss` + 6 hex chars."""
    return "ss" + secrets.token_hex(3)


def _mac_from_ip(first: int, address: str) -> str:
    return ":".join(f"{b:02x}" for b in (0x02, first, *ipaddress.IPv4Address(address).packed))


@dataclass(frozen=True)
class Topology:
    """Names and addresses of one test bed; defaults need no file."""

    prefix: str = field(default_factory=new_prefix)
    member_count: int = 2
    vip: str = "198.18.0.1"
    primary: str = "198.18.0.2"
    shadow: str = "198.18.0.3"
    client: str = "198.18.0.10"
    first_member: str = "198.18.0.21"
    service_prefixlen: int = 25
    primary_replication: str = "198.18.0.129"
    shadow_replication: str = "198.18.0.130"
    replication_prefixlen: int = 30
    sip_port: int = 5060

    def __post_init__(self) -> None:
        if not _PREFIX_RE.match(self.prefix):
            raise ValueError(f"prefix {self.prefix!r} must be 2-10 chars of [a-z0-9], starting with a letter")
        if not 0 <= self.member_count <= 100:
            raise ValueError("member_count must be between 0 and 100")
        service = self.service_network
        service_hosts = [self.vip, self.primary, self.shadow, self.client, *self.member_addresses]
        replication = [self.primary_replication, self.shadow_replication]
        everything = service_hosts + replication
        for address in everything:
            if ipaddress.IPv4Address(address) not in ALLOWED_NETWORK:
                raise ValueError(f"{address} is outside {ALLOWED_NETWORK}")
        for address in service_hosts:
            if ipaddress.IPv4Address(address) not in service:
                raise ValueError(f"{address} is outside the service network {service}")
        rep_net = self.replication_network
        for address in replication:
            if ipaddress.IPv4Address(address) not in rep_net or rep_net.overlaps(service):
                raise ValueError(f"{address} must be in {rep_net}, which must not overlap {service}")
        if len(set(everything)) != len(everything):
            raise ValueError("addresses must be distinct")

    @classmethod
    def from_toml(cls, path: str | Path, *, prefix: str | None = None) -> Topology:
        """Read a `[testbed]` table (or top-level keys) naming any of this class's fields."""
        data: dict[str, Any] = tomllib.loads(Path(path).read_text())
        data = data.get("testbed", data)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown test bed keys in {path}: {sorted(unknown)}")
        if prefix is not None:
            data = {**data, "prefix": prefix}
        return cls(**data)

    @property
    def service_network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Interface(f"{self.vip}/{self.service_prefixlen}").network

    @property
    def replication_network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Interface(f"{self.primary_replication}/{self.replication_prefixlen}").network

    @property
    def members(self) -> tuple[str, ...]:
        return tuple(f"member{i}" for i in range(1, self.member_count + 1))

    @property
    def member_addresses(self) -> tuple[str, ...]:
        first = ipaddress.IPv4Address(self.first_member)
        return tuple(str(first + i) for i in range(self.member_count))

    @property
    def hosts(self) -> tuple[str, ...]:
        """Every host with a service interface (the switch is not a host)."""
        return ("client", "primary", "shadow", *self.members)

    def address_of(self, host: str) -> str:
        """The host's service address (`vip` names the service address itself)."""
        if host in ("vip", "client", "primary", "shadow"):
            return str(getattr(self, host))
        if host in self.members:
            return self.member_addresses[self.members.index(host)]
        raise KeyError(f"unknown host {host!r}")

    def replication_address_of(self, host: str) -> str:
        if host not in PAIR:
            raise KeyError(f"{host!r} has no replication link")
        return self.primary_replication if host == "primary" else self.shadow_replication


def list_namespaces(prefix: str) -> list[str]:
    """Names of the existing namespaces that belong to prefix."""
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(name for name in names if name.startswith(prefix + "-"))


NsKey = tuple[int, int]  # (st_dev, st_ino) of a network namespace's nsfs file


def namespace_keys(names: Iterable[str]) -> dict[NsKey, str]:
    """Identify named namespaces by inode, which stays valid after their /run/netns entry is gone."""
    keys: dict[NsKey, str] = {}
    for name in names:
        try:
            st = os.stat(NETNS_DIR / name)
        except FileNotFoundError:
            continue
        keys[(st.st_dev, st.st_ino)] = name
    return keys


def pids_in(keys: dict[NsKey, str]) -> dict[str, list[int]]:
    """Live processes per namespace (what `ip netns pids` does, in one pass over /proc)."""
    found: dict[str, list[int]] = {name: [] for name in keys.values()}
    if not keys:
        return found
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue  # gone, a zombie, or a kernel thread
        name = keys.get((st.st_dev, st.st_ino))
        if name is not None:
            found[name].append(int(entry))
    return found


def namespace_pids(names: Iterable[str]) -> dict[str, list[int]]:
    """Live processes per named namespace."""
    return pids_in(namespace_keys(names))


def kill_namespace_processes(keys: dict[NsKey, str], *, timeout: float = 5.0) -> list[int]:
    """SIGKILL every process inside the namespaces and wait until none is left."""
    killed: list[int] = []
    deadline = time.monotonic() + timeout
    while True:
        pids = [pid for group in pids_in(keys).values() for pid in group if pid != os.getpid()]
        if not pids:
            return killed
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {pids} survive SIGKILL in {sorted(keys.values())}")
        killed += sigkill(pids)
        time.sleep(0.01)


def down_all(prefix: str) -> list[str]:
    """Remove every namespace of prefix, killing the processes inside first; return the names removed.

    Processes are killed again after the names are gone: one that was entering a namespace (e.g. an
    `ip netns exec` between open and setns) while it was being removed would otherwise keep it alive.
    """
    names = list_namespaces(prefix)
    if not names:
        return []
    keys = namespace_keys(names)
    kill_namespace_processes(keys)
    script = "".join(f"netns del {name}\n" for name in names)
    subprocess.run(["ip", "-force", "-batch", "-"], input=script, capture_output=True, text=True, check=False)
    kill_namespace_processes(keys)
    left = list_namespaces(prefix)
    if left:
        raise RuntimeError(f"could not remove namespaces {left}")
    return names


class Testbed:
    """Builds and removes the namespaces, links and addresses of a Topology."""

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, topology: Topology | None = None) -> None:
        self.topology = topology or Topology()
        self._up = False

    @property
    def prefix(self) -> str:
        return self.topology.prefix

    # names ---------------------------------------------------------------------------------
    def ns_name(self, host: str) -> str:
        if host != SWITCH and host not in self.topology.hosts:
            raise KeyError(f"unknown host {host!r}")
        return f"{self.prefix}-{host}"

    def namespaces(self) -> list[str]:
        return [self.ns_name(host) for host in (SWITCH, *self.topology.hosts)]

    def service_if(self, host: str) -> str:
        """The host's interface on the service network."""
        self.ns_name(host)
        return BRIDGE if host == SWITCH else SERVICE_IF

    def replication_if(self, host: str) -> str:
        """The host's end of the primary-shadow replication/heartbeat link."""
        if host not in PAIR:
            raise KeyError(f"{host!r} has no replication link")
        return REPLICATION_IF

    def switch_port(self, host: str) -> str:
        """The bridge port (in the switch namespace) cabled to the host."""
        if host not in self.topology.hosts:
            raise KeyError(f"unknown host {host!r}")
        return f"sw-{host}"

    def mac_of(self, host: str) -> str:
        """The MAC of the host's service interface: 02:00 + its IPv4 address."""
        return _mac_from_ip(0x00, self.topology.address_of(host))

    def replication_mac_of(self, host: str) -> str:
        return _mac_from_ip(0x00, self.topology.replication_address_of(host))

    def switch_port_mac(self, host: str) -> str:
        return _mac_from_ip(0x01, self.topology.address_of(host))

    def address_of(self, host: str) -> str:
        return self.topology.address_of(host)

    # running things in a host ----------------------------------------------------------------
    def exec_argv(self, host: str, argv: Sequence[str]) -> list[str]:
        """An argv that starts argv inside the host's namespace."""
        return in_namespace(argv, self.ns_name(host))

    def run(self, host: str, argv: Sequence[str], *, input: str | None = None) -> str:
        """Run argv inside the host's namespace; return stdout or raise CommandError."""
        return run_checked(self.exec_argv(host, argv), input=input)

    def ip(self, host: str, *args: str) -> str:
        """`ip -n NS ARGS...`: an iproute2 command inside the host's namespace."""
        return run_checked(["ip", "-n", self.ns_name(host), *args])

    def pids(self, host: str) -> list[int]:
        return namespace_pids([self.ns_name(host)]).get(self.ns_name(host), [])

    # lifecycle -------------------------------------------------------------------------------
    def is_up(self) -> bool:
        return self._up

    def up(self) -> Testbed:
        """Create everything; idempotent. On failure, remove what was made and re-raise."""
        if self._up:
            return self
        taken = list_namespaces(self.prefix)
        if taken:
            raise RuntimeError(f"namespaces of prefix {self.prefix!r} already exist: {taken}")
        atexit.register(self.down)
        self._up = True
        try:
            self._build()
        except BaseException:
            self.down()
            raise
        return self

    def keep(self) -> None:
        """Let the bed outlive this process (`sipshadow lab up`); `down_all(prefix)` removes it."""
        atexit.unregister(self.down)

    def down(self) -> None:
        """Remove every namespace of the prefix (killing processes inside first); idempotent."""
        atexit.unregister(self.down)
        down_all(self.prefix)
        self._up = False

    def __enter__(self) -> Testbed:
        return self.up()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.down()

    def _build(self) -> None:
        topo = self.topology
        run_checked(["ip", "-batch", "-"], input="".join(f"netns add {ns}\n" for ns in self.namespaces()))
        sysctls = {host: _SWITCH_SYSCTLS if host == SWITCH else _HOST_SYSCTLS for host in (SWITCH, *topo.hosts)}
        run_all((self.exec_argv(host, ["sysctl", "-q", "-e", "-w", *keys]), None) for host, keys in sysctls.items())
        switch = [f"link add {BRIDGE} type bridge", f"link set {BRIDGE} up"]
        for host in topo.hosts:
            port = self.switch_port(host)
            switch += [
                f"link add {port} address {self.switch_port_mac(host)} type veth"
                f" peer name {SERVICE_IF} address {self.mac_of(host)} netns {self.ns_name(host)}",
                f"link set {port} master {BRIDGE}",
                f"link set {port} up",
            ]
        replication = [
            f"link add {REPLICATION_IF} address {self.replication_mac_of('primary')} type veth"
            f" peer name {REPLICATION_IF} address {self.replication_mac_of('shadow')} netns {self.ns_name('shadow')}"
        ]
        run_all(
            [
                (["ip", "-n", self.ns_name(SWITCH), "-batch", "-"], "\n".join(switch) + "\n"),
                (["ip", "-n", self.ns_name("primary"), "-batch", "-"], "\n".join(replication) + "\n"),
            ]
        )
        run_all((["ip", "-n", self.ns_name(host), "-batch", "-"], self._host_script(host)) for host in topo.hosts)

    def _host_script(self, host: str) -> str:
        topo = self.topology
        plen = topo.service_prefixlen
        lines = ["link set lo up", f"addr add {topo.address_of(host)}/{plen} dev {SERVICE_IF}"]
        if host == "primary":
            lines.append(
                f"addr add {topo.vip}/{plen} dev {SERVICE_IF}"
            )  # the bare bed's primary owns the VIP; a tap-mode node replaces it with its leased /32
        lines.append(f"link set {SERVICE_IF} up")
        if host in PAIR:
            rep = topo.replication_address_of(host)
            lines += [
                f"addr add {rep}/{topo.replication_prefixlen} dev {REPLICATION_IF}",
                f"link set {REPLICATION_IF} up",
            ]
        return "\n".join(lines) + "\n"

"""The node's TOML config, validated into plain values; one clear line per mistake.

Layout (every key optional but `cluster.members`; flags given on the command line win):

    [service]   listen = "HOST:PORT", advertise = "HOST:PORT"
    [cluster]   policy = "round-robin", members = ["HOST:PORT", {address = "HOST:PORT", weight = 2}],
                a member as a SIP URI picks its transport: "sip:HOST:PORT;transport=tcp" (HOST:PORT is UDP)
    [health]    probe_interval_ms = 1000, probe_misses = 3
    [dialogs]   early_timeout_s = 200 (Timer C; 180 or less is warned of), confirmed_timeout_s = 7200,
                terminated_linger_s = 32
    [tcp]       max_head_bytes = 16384, max_body_bytes = 65536, connections = 16384,
                connections_per_source = 4096, partial_timeout_s = 10, idle_timeout_s = 600,
                large_requests_over_tcp = true (§18.1.1: over 1300 bytes, a UDP member gets TCP)
    [status]    file = "PATH", interval_s = 1.0
    [control]   socket = "PATH" (`sipshadow ctl`; off when empty)
    [metrics]   listen = "HOST:PORT" (Prometheus exposition at /metrics; off when empty)
    [log]       level = "info", format = "text" | "json"
    [cdr]       store = "PATH.sqlite" | "postgresql://USER@HOST/DB" (call records; off when empty),
                journal = "PATH" (default STORE.journal for SQLite; required for PostgreSQL), fsync = false
    [replication]  role = "solo", mode = "active", listen = "HOST:PORT", peer = "HOST:PORT",
                   key = "..." or key_file = "PATH", output_commit = true, commit_timeout_ms = 200,
                   heartbeat_interval_ms = 10, heartbeat_misses = 4, node_id = "...", peer_node_id = "...",
                   input = "forward" | "tap", vip_interface = "IFNAME", vip_lifetime_ms = 3000,
                   tap_horizon_ms = 2000, arbiter_listen = "HOST:PORT", arbiter_peer = "HOST:PORT",
                   detector = "heartbeat" | "keepalived", handover_timeout_ms = 2000
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from sipshadow.core.actions import TCP, UDP, Address
from sipshadow.core.config import POLICIES, GatewayConfig, MemberSpec
from sipshadow.records.stores import is_postgres
from sipshadow.runtime.addresses import is_ip_literal, parse_address
from sipshadow.runtime.streams import StreamLimits

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
#: Who declares the primary dead: our heartbeats, or keepalived's VRRP (which then tells the
#: node through `sipshadow ctl takeover | standby`).
DETECTORS = ("heartbeat", "keepalived")
ROLES = ("solo", "primary", "shadow")
#: The paper's three cases, in its order (no HA, network-level HA, active replication).
HA_MODES = ("none", "network", "active")
INPUTS = ("forward", "tap")
#: A call may ring this long before Timer C ends it (RFC 3261 §16.6 item 11: more than 3 min).
TIMER_C_FLOOR_S = 180.0
#: BLAKE2b personalization (16 bytes) that separates the branch key from the pair key it comes from.
BRANCH_KEY_PERSON = b"sipshadow-branch"


class ConfigError(Exception):
    """A config or flag mistake: `key` names where, the message says what is wrong."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"config error: {key}: {problem}")
        self.key = key


class _Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class MemberEntry(_Strict):
    address: str
    weight: int = 1


class ServiceSection(_Strict):
    listen: str = "127.0.0.1:5060"
    advertise: str = ""


class ClusterSection(_Strict):
    policy: str = "round-robin"
    members: list[str | MemberEntry] = msgspec.field(default_factory=list)


class HealthSection(_Strict):
    probe_interval_ms: int = 1000
    probe_misses: int = 3


class DialogsSection(_Strict):
    early_timeout_s: float = 200.0
    confirmed_timeout_s: float = 7200.0
    terminated_linger_s: float = 32.0


_TCP_DEFAULTS = StreamLimits()


class TcpSection(_Strict):
    max_head_bytes: int = _TCP_DEFAULTS.max_head_bytes
    max_body_bytes: int = _TCP_DEFAULTS.max_body_bytes
    connections: int = _TCP_DEFAULTS.connections
    connections_per_source: int = _TCP_DEFAULTS.connections_per_source
    partial_timeout_s: float = _TCP_DEFAULTS.partial_timeout_s
    idle_timeout_s: float = _TCP_DEFAULTS.idle_timeout_s
    large_requests_over_tcp: bool = True


class StatusSection(_Strict):
    file: str = ""
    interval_s: float = 1.0


class LogSection(_Strict):
    level: str = "info"
    format: str = "text"


class ControlSection(_Strict):
    socket: str = ""


class MetricsSection(_Strict):
    listen: str = ""


class CdrSection(_Strict):
    store: str = ""
    journal: str = ""
    fsync: bool = False


class ReplicationSection(_Strict):
    role: str = "solo"
    mode: str = "active"
    listen: str = ""
    peer: str = ""
    key: str = ""
    key_file: str = ""
    node_id: str = ""
    #: The peer's node id; only it may hold a session with this node. Default: the peer's
    #: address text when `node_id` is not set either (each side's default id), else any id.
    peer_node_id: str = ""
    output_commit: bool = True
    commit_timeout_ms: int = 200
    heartbeat_interval_ms: int = 10
    heartbeat_misses: int = 4
    input: str = "forward"
    vip_interface: str = ""
    #: Tap mode: the VIP's lifetime on the primary's interface, renewed every third of it; a
    #: killed primary's host drops the VIP this long after its last renewal (net.vip.VIP_LIFETIME_S).
    vip_lifetime_ms: int = 3000
    arbiter_listen: str = ""
    arbiter_peer: str = ""
    tap_horizon_ms: int = 2000
    detector: str = "heartbeat"
    #: A switchover or SIGTERM waits this long for the shadow to acknowledge the log's end.
    handover_timeout_ms: int = 2000


class ConfigFile(_Strict):
    service: ServiceSection = msgspec.field(default_factory=ServiceSection)
    cluster: ClusterSection = msgspec.field(default_factory=ClusterSection)
    health: HealthSection = msgspec.field(default_factory=HealthSection)
    dialogs: DialogsSection = msgspec.field(default_factory=DialogsSection)
    tcp: TcpSection = msgspec.field(default_factory=TcpSection)
    status: StatusSection = msgspec.field(default_factory=StatusSection)
    log: LogSection = msgspec.field(default_factory=LogSection)
    control: ControlSection = msgspec.field(default_factory=ControlSection)
    metrics: MetricsSection = msgspec.field(default_factory=MetricsSection)
    cdr: CdrSection = msgspec.field(default_factory=CdrSection)
    replication: ReplicationSection = msgspec.field(default_factory=ReplicationSection)


@dataclass(frozen=True, slots=True)
class ReplicationConfig:
    """How this node pairs with its peer (role `solo`: it does not)."""

    role: str
    mode: str
    listen: Address
    peer: Address
    key: bytes
    node_id: str
    output_commit: bool
    commit_timeout_s: float
    heartbeat_interval_s: float
    heartbeat_misses: int
    input: str = "forward"
    vip_interface: str = ""
    arbiter_listen: Address | None = None
    arbiter_peer: Address | None = None
    tap_horizon_s: float = 2.0
    peer_node_id: str | None = None  #: None: any node id but this node's own
    vip_lifetime_s: int = 3
    detector: str = "heartbeat"  #: one of `DETECTORS`
    handover_timeout_s: float = 2.0


@dataclass(frozen=True, slots=True)
class RecordsConfig:
    """Where call records go (`sipshadow.records`): `store` a SQLite path or a PostgreSQL URL,
    `journal` the local file that holds them until the store has them, `fsync` each append."""

    store: str
    journal: Path
    fsync: bool = False


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Everything a node needs, validated."""

    listen: Address
    gateway: GatewayConfig
    status_file: Path | None
    status_interval_s: float
    log_level: str
    replication: ReplicationConfig | None = None
    tcp: StreamLimits = field(default_factory=StreamLimits)
    log_format: str = "text"
    control_socket: Path | None = None
    metrics_listen: Address | None = None
    records: RecordsConfig | None = None
    #: Legal but risky settings, one line each, logged when the node starts.
    warnings: tuple[str, ...] = ()


def load_file(path: Path) -> ConfigFile:
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise ConfigError("--config", f"cannot read {path}: {error.strerror}") from None
    try:
        return msgspec.toml.decode(raw, type=ConfigFile)
    except msgspec.ValidationError as error:
        raise _from_validation(error) from None
    except msgspec.DecodeError as error:
        raise ConfigError(str(path), f"not valid TOML ({error})") from None


def _from_validation(error: msgspec.ValidationError) -> ConfigError:
    message = str(error)
    problem, _, where = message.partition(" - at `$")
    key = where.rstrip("`").lstrip(".") or "(top level)"
    if problem.startswith("Object contains unknown field"):
        field_name = problem.split("`")[1]
        key = f"{key}.{field_name}" if key != "(top level)" else field_name
        problem = "unknown key"
    return ConfigError(key, problem[0].lower() + problem[1:])


def build(
    file: ConfigFile,
    *,
    listen: str | None = None,
    members: list[str] | None = None,
    policy: str | None = None,
    status_file: str | None = None,
    role: str | None = None,
    peer: str | None = None,
) -> NodeConfig:
    """Merge flags over the file and validate every value."""
    listen_text = listen if listen is not None else file.service.listen
    listen_address = _address("service.listen" if listen is None else "--listen", listen_text)
    advertise = listen_address
    if file.service.advertise:
        advertise = _address("service.advertise", file.service.advertise)
    if not is_ip_literal(advertise[0]) or advertise[0] in ("0.0.0.0", "::"):
        raise ConfigError("service.advertise", f"{advertise[0]!r} is not a usable IP address to put in Via")
    specs = _members(file.cluster.members, members)
    chosen_policy = policy if policy is not None else file.cluster.policy
    if chosen_policy not in POLICIES:
        key = "--policy" if policy is not None else "cluster.policy"
        raise ConfigError(key, f"unknown policy {chosen_policy!r}; expected one of {', '.join(POLICIES)}")
    _positive("health.probe_interval_ms", file.health.probe_interval_ms, allow_zero=True)
    _positive("health.probe_misses", file.health.probe_misses)
    for name in ("early_timeout_s", "confirmed_timeout_s", "terminated_linger_s"):
        _positive(f"dialogs.{name}", getattr(file.dialogs, name))
    warnings = []
    if file.dialogs.early_timeout_s <= TIMER_C_FLOOR_S:
        warnings.append(
            f"dialogs.early_timeout_s = {file.dialogs.early_timeout_s:g} is not above 180 s (RFC 3261 §16.6 item 11:"
            " Timer C exceeds 3 minutes): a call that rings longer without a provisional loses its route"
        )
    tcp = _tcp_limits(file.tcp)
    _positive("status.interval_s", file.status.interval_s)
    if file.log.level not in LOG_LEVELS:
        raise ConfigError("log.level", f"expected one of {', '.join(LOG_LEVELS)}")
    if file.log.format not in LOG_FORMATS:
        raise ConfigError("log.format", f"expected one of {', '.join(LOG_FORMATS)}")
    metrics_listen = _address("metrics.listen", file.metrics.listen) if file.metrics.listen else None
    replication = _replication(file.replication, role, peer, listen_address)
    records = records_config(file.cdr)
    gateway = GatewayConfig(
        service=advertise,
        members=specs,
        policy=chosen_policy,
        probe_interval_s=file.health.probe_interval_ms / 1000,
        probe_misses=file.health.probe_misses,
        early_timeout_s=file.dialogs.early_timeout_s,
        confirmed_timeout_s=file.dialogs.confirmed_timeout_s,
        terminated_linger_s=file.dialogs.terminated_linger_s,
        aliases=(listen_address,) if listen_address != advertise else (),
        branch_key=branch_key(replication.key if replication is not None else None),
        large_requests_over_tcp=file.tcp.large_requests_over_tcp,
        call_records=records is not None,
    )
    status_path = status_file if status_file is not None else file.status.file
    return NodeConfig(
        listen=listen_address,
        gateway=gateway,
        status_file=Path(status_path) if status_path else None,
        status_interval_s=file.status.interval_s,
        log_level=file.log.level,
        replication=replication,
        tcp=tcp,
        log_format=file.log.format,
        control_socket=Path(file.control.socket) if file.control.socket else None,
        metrics_listen=metrics_listen,
        records=records,
        warnings=tuple(warnings),
    )


def records_config(section: CdrSection) -> RecordsConfig | None:
    """`[cdr]`: off without a store; a SQLite file's directory must exist, a PostgreSQL URL parse."""
    if not section.store:
        if section.journal:
            raise ConfigError("cdr.journal", "given without cdr.store (where the records go)")
        return None
    if is_postgres(section.store):
        from psycopg.conninfo import conninfo_to_dict  # only when configured: psycopg is a large import

        try:
            conninfo_to_dict(section.store)
        except Exception as error:  # psycopg's ProgrammingError: a malformed URL
            raise ConfigError("cdr.store", f"not a usable PostgreSQL URL: {error}") from None
        if not section.journal:
            raise ConfigError("cdr.journal", "required with a PostgreSQL store: a local file that holds the records"
                              " the database has not taken yet")  # fmt: skip
    elif not Path(section.store).parent.is_dir():
        raise ConfigError("cdr.store", f"directory {Path(section.store).parent} does not exist")
    journal = Path(section.journal) if section.journal else Path(section.store + ".journal")
    if not journal.parent.is_dir():
        raise ConfigError("cdr.journal", f"directory {journal.parent} does not exist")
    return RecordsConfig(section.store, journal, section.fsync)


def _replication(
    section: ReplicationSection, role_flag: str | None, peer_flag: str | None, service: Address
) -> ReplicationConfig | None:
    role = role_flag if role_flag is not None else section.role
    if role not in ROLES:
        raise ConfigError(
            "--role" if role_flag is not None else "replication.role", f"expected one of {', '.join(ROLES)}"
        )
    if role == "solo":
        return None
    if section.mode not in HA_MODES:
        raise ConfigError("replication.mode", f"expected one of {', '.join(HA_MODES)}")
    peer_text = peer_flag if peer_flag is not None else section.peer
    if not peer_text:
        raise ConfigError("replication.peer", f"required for role {role} (or give --peer)")
    peer = _address("--peer" if peer_flag is not None else "replication.peer", peer_text)
    if not section.listen:
        raise ConfigError("replication.listen", f"required for role {role}: this node's replication address")
    listen = _address("replication.listen", section.listen)
    if listen == peer:
        raise ConfigError("replication.peer", "is this node's own replication.listen address")
    _positive("replication.commit_timeout_ms", section.commit_timeout_ms)
    _positive("replication.heartbeat_interval_ms", section.heartbeat_interval_ms)
    _positive("replication.heartbeat_misses", section.heartbeat_misses)
    _positive("replication.tap_horizon_ms", section.tap_horizon_ms)
    _vip_lifetime(section)
    _positive("replication.handover_timeout_ms", section.handover_timeout_ms)
    if section.detector not in DETECTORS:
        raise ConfigError("replication.detector", f"expected one of {', '.join(DETECTORS)}")
    if section.input not in INPUTS:
        raise ConfigError("replication.input", f"expected one of {', '.join(INPUTS)}")
    if section.detector == "keepalived" and section.input != "tap":
        raise ConfigError("replication.detector", 'keepalived needs input = "tap" (a handoff between two hosts '
                          "leaves through the mirror; forward mode passes sockets on one host only)")  # fmt: skip
    if section.input == "tap" and not section.vip_interface:
        raise ConfigError("replication.vip_interface", 'required with input = "tap" (where the VIP goes at takeover)')
    if bool(section.arbiter_listen) != bool(section.arbiter_peer):
        raise ConfigError("replication.arbiter_peer", "arbiter_listen and arbiter_peer go together")
    arbiter_listen = _address("replication.arbiter_listen", section.arbiter_listen) if section.arbiter_listen else None
    arbiter_peer = _address("replication.arbiter_peer", section.arbiter_peer) if section.arbiter_peer else None
    return ReplicationConfig(
        role=role,
        mode=section.mode,
        listen=listen,
        peer=peer,
        key=_key(section),
        node_id=section.node_id or f"{listen[0]}:{listen[1]}",
        peer_node_id=section.peer_node_id or (None if section.node_id else f"{peer[0]}:{peer[1]}"),
        output_commit=section.output_commit,
        commit_timeout_s=section.commit_timeout_ms / 1000,
        heartbeat_interval_s=section.heartbeat_interval_ms / 1000,
        heartbeat_misses=section.heartbeat_misses,
        input=section.input,
        vip_interface=section.vip_interface,
        arbiter_listen=arbiter_listen,
        arbiter_peer=arbiter_peer,
        tap_horizon_s=section.tap_horizon_ms / 1000,
        vip_lifetime_s=section.vip_lifetime_ms // 1000,
        detector=section.detector,
        handover_timeout_s=section.handover_timeout_ms / 1000,
    )


def _vip_lifetime(section: ReplicationSection) -> None:
    """Whole seconds (the kernel's unit for address lifetimes), and longer than three detection
    windows, so renewals every third of it never let the VIP lapse on a node that beats."""
    key, lifetime_ms = "replication.vip_lifetime_ms", section.vip_lifetime_ms
    _positive(key, lifetime_ms)
    if lifetime_ms % 1000:
        raise ConfigError(key, f"must be whole seconds (the kernel's unit for address lifetimes), got {lifetime_ms}")
    window_ms = section.heartbeat_interval_ms * section.heartbeat_misses
    if lifetime_ms <= 3 * window_ms:
        raise ConfigError(
            key, f"must be > 3 x the heartbeat window (heartbeat_interval_ms x heartbeat_misses = {window_ms}), "
            f"got {lifetime_ms}",
        )  # fmt: skip


def branch_key(pair_key: bytes | None) -> bytes:
    """The key of the gateway's Via branch MACs (`GatewayConfig.branch_key`), 32 bytes.

    In a pair, derived from the pair key (domain-separated by BLAKE2b's personalization, so it
    reveals nothing of the key that authenticates replication): both nodes compute the same
    branches, and the survivor of a takeover accepts the responses to the old primary's
    requests. A solo node has no replica to agree with: a key drawn now, once per process.
    """
    if pair_key is None:
        return secrets.token_bytes(32)
    return hashlib.blake2b(pair_key, digest_size=32, person=BRANCH_KEY_PERSON).digest()


def _key(section: ReplicationSection) -> bytes:
    if section.key and section.key_file:
        raise ConfigError("replication.key", "give key or key_file, not both")
    if section.key_file:
        try:
            key = Path(section.key_file).read_bytes().strip()
        except OSError as error:
            raise ConfigError("replication.key_file", f"cannot read {section.key_file}: {error.strerror}") from None
    else:
        key = section.key.encode()
    if len(key) < 16:
        raise ConfigError("replication.key", "a shared HMAC key of at least 16 bytes is required")
    return key


def _address(key: str, text: str) -> Address:
    try:
        return parse_address(text)
    except ValueError as error:
        raise ConfigError(key, str(error)) from None


def _tcp_limits(section: TcpSection) -> StreamLimits:
    for name in ("max_head_bytes", "max_body_bytes", "connections", "connections_per_source",
                 "partial_timeout_s", "idle_timeout_s"):  # fmt: skip
        _positive(f"tcp.{name}", getattr(section, name))
    return StreamLimits(
        max_head_bytes=section.max_head_bytes, max_body_bytes=section.max_body_bytes,
        connections=section.connections, connections_per_source=section.connections_per_source,
        partial_timeout_s=section.partial_timeout_s, idle_timeout_s=section.idle_timeout_s,
    )  # fmt: skip


def _member(key: str, text: str, weight: int = 1) -> MemberSpec:
    """A member as HOST:PORT (UDP) or a SIP URI, sip:HOST[:PORT][;transport=udp|tcp]."""
    if text[:4].lower() != "sip:":
        return MemberSpec(_address(key, text), weight)
    hostport, _, params = text[4:].partition(";")
    transport = UDP
    for param in params.split(";") if params else ():
        name, _, value = param.partition("=")
        if name.strip().lower() != "transport":
            raise ConfigError(key, f"{text!r}: only the transport parameter is understood, not {name!r}")
        transport = value.strip().lower()
        if transport not in (UDP, TCP):
            raise ConfigError(key, f"{text!r}: transport must be udp or tcp, not {value!r}")
    if "@" in hostport:
        raise ConfigError(key, f"{text!r}: a member URI names a host, not a user (sip:HOST:PORT;transport=tcp)")
    if ":" not in hostport.rsplit("]", 1)[-1]:
        hostport += ":5060"
    return MemberSpec(_address(key, hostport), weight, transport)


def _members(entries: list[str | MemberEntry], flags: list[str] | None) -> tuple[MemberSpec, ...]:
    specs: list[MemberSpec] = []
    if flags:
        specs = [_member("--member", text) for text in flags]
    else:
        for index, entry in enumerate(entries):
            key = f"cluster.members[{index}]"
            if isinstance(entry, str):
                specs.append(_member(key, entry))
            else:
                _positive(f"{key}.weight", entry.weight)
                specs.append(_member(f"{key}.address", entry.address, entry.weight))
    if not specs:
        raise ConfigError("cluster.members", "at least one member is required (or give --member)")
    seen: set[Address] = set()
    for spec in specs:
        if spec.address in seen:
            raise ConfigError("cluster.members", f"{spec.address[0]}:{spec.address[1]} is listed twice")
        seen.add(spec.address)
    return tuple(specs)


def _positive(key: str, value: float, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(key, f"must be {'>= 0' if allow_zero else '> 0'}, got {value}")

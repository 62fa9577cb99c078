"""The operator's view of a running node: counters as JSON in a file, replaced atomically.

A file is what monitoring already knows how to scrape (node_exporter's textfile collector,
a cron'd `jq`), and `sipshadow stats FILE` prints it as a table.

The document is typed once, here: `StatusDocument` and the Structs it holds. Field names
are the file's JSON keys. The producers (`snapshot`, `Node.status`, `PrimaryLink.status`,
`HaNode.status`) build these Structs, `write_atomically` encodes one, and `read_status` is
the one reader (stats view, lab, experiment, benchmarks, tests). Keys a reader does not know
(an older or newer node's) are ignored. Times are in seconds unless the name says `_ms`;
plain integers are counts since the node (or that part of it) started.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import msgspec

from sipshadow.core import Gateway
from sipshadow.core.actions import format_address
from sipshadow.core.counters import Counters
from sipshadow.ha.roles import RoleMachine
from sipshadow.link import Peering
from sipshadow.records.writer import RecordsStatus
from sipshadow.replication.follower import Follower
from sipshadow.runtime.config import ReplicationConfig


class MemberStatus(msgspec.Struct, kw_only=True):
    """One cluster member, as the serving node sees it."""

    address: str  #: HOST:PORT, as in the config
    up: bool  #: gets new calls (health probes answered)
    calls: int = 0  #: calls routed to it
    active_calls: int = 0  #: calls it holds now
    missed_probes: int = 0  #: probe rounds in a row with no answer at all
    weight: int = 1  #: its share of new calls under weighted-random
    transport: str = "udp"  #: udp | tcp: how the ALG reaches it
    draining: bool = False  #: `sipshadow ctl drain`: no new calls; its calls finish
    retired: bool = False  #: gone from the config at a reload: no new calls; its calls finish


class ReplicationStatus(msgspec.Struct, kw_only=True):
    """The primary's side of replication (`PrimaryLink`): its log and what the shadow acked."""

    seq: int = 0  #: last log entry recorded
    released: int = 0  #: last entry whose outputs were sent (output commit)
    shadow_attached: bool = False  #: a shadow is connected (and in sync unless `shadow_joining`)
    shadow_joining: bool = False  #: it is still taking the snapshot or catching up: outputs not held for it
    entries_sent: int = 0
    frames_sent: int = 0
    acks: int = 0
    snapshots_sent: int = 0
    shadow_losses: int = 0  #: shadows detached (connection lost or commit timeout)
    commit_timeouts: int = 0  #: outputs released without the shadow's ack
    payloads_sent: int = 0  #: datagrams sent to a shadow that had no tapped copy
    joins: int = 0  #: shadows that caught up with the log after their snapshot (output commit on)
    join_timeouts: int = 0  #: shadows dropped for not catching up within the join timeout
    commit_lapses: int = 0  #: times outputs stopped waiting for a slow or silent shadow until it caught up
    refused_frames: int = 0  #: frames from a shadow that failed authentication or decoding
    release_errors: int = 0  #: released outputs the sender raised on
    last_snapshot_ms: float = 0.0  #: from the last Hello until every snapshot row was written, ms
    lag_entries: int = 0  #: entries recorded that the shadow has not acknowledged yet
    lag_bytes: int = 0  #: their encoded size, bytes


class TapStatus(msgspec.Struct, kw_only=True):
    """A tapping shadow's buffer of copied datagrams (`replication.input = "tap"`)."""

    buffered: int = 0  #: datagrams held now, waiting for a log entry to claim them
    received: int = 0
    matched: int = 0  #: claimed by a log entry
    pruned: int = 0  #: dropped past the tap horizon, unclaimed


class FollowerStatus(msgspec.Struct, kw_only=True):
    """A shadow's replica and its `Follower` (the counters are `replication.follower.STATS`)."""

    synced: bool = False  #: holds a snapshot and follows the log
    applied: int = 0  #: last log entry applied to the replica
    released: int = 0  #: last entry the primary said it released
    dialogs: int = 0  #: dialogs the replica holds
    pending_entries: int = 0  #: entries received, waiting for their tapped datagram
    snapshots: int = 0
    entries_applied: int = 0
    refused_frames: int = 0
    divergences: int = 0  #: log entries that did not replay (the replica resyncs)
    connects: int = 0
    payload_requests: int = 0
    payloads_received: int = 0
    gated_outputs: int = 0  #: replica outputs counted, never sent


class TakeoverRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One takeover this node attempted: either `aborted` (the address was still owned) or
    the rest (it completed). Absent fields are None."""

    epoch: int  #: the epoch it claimed
    aborted: str | None = None  #: why it gave up (an OSError's text)
    ms: float | None = None  #: verdict to serving, ms (this process's clock)
    resent: int | None = None  #: outputs the old primary may not have sent, sent again
    unlogged_processed: int | None = None  #: tapped datagrams no log entry claimed, processed
    stranded_entries: int | None = None  #: entries received whose payload never came
    dialogs: int | None = None  #: dialogs taken over
    entry: int | None = None  #: last log entry applied before taking over
    network_ms: dict[str, float] | None = None  #: service-address claim, step by step, ms
    verdict_at: float | None = None  #: wall clock (time.time(), s) of the decision
    serving_at: float | None = None  #: wall clock (s) when it served as primary


class HaStatus(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The HA shell (`HaNode`): role, epoch, failure detection and the role machine's counters."""

    role: str  #: starting | shadow | taking-over | primary | fenced
    epoch: int
    mode: str  #: none | network | active
    peer_alive: bool  #: heartbeats heard from the peer within the detection window
    heartbeats_refused: int  #: heartbeats that failed authentication or decoding
    detector_stalls: int  #: turns of the detector's own loop missed (this node stalled; judged no silence)
    gated_outputs: int  #: replica outputs gated (counted, never sent), all followers so far
    takeovers: list[TakeoverRecord]
    input: str  #: forward | tap: how a shadow gets the service datagrams
    arbiter_peer_alive: bool  #: the peer heard on the service network (the arbiter)
    held_by_arbiter: int  #: takeovers held back because the arbiter still heard the peer
    step_downs: int
    fences: int
    aborted_takeovers: int
    tap: TapStatus | None = None  #: a tapping shadow only
    shadow: FollowerStatus | None = None  #: a shadow only
    #: Misconfiguration seen on the links (a key mismatch, a foreign node, another protocol
    #: version), until a session comes up; the node keeps retrying meanwhile.
    alarms: list[str] = msgspec.field(default_factory=list)
    #: Frames refused on the pair's links, by reason (`sipshadow.link.REASONS`); nonzero only.
    link_refused: dict[str, int] = msgspec.field(default_factory=dict)


class StatusDocument(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A node's status file. A serving node (solo or primary) fills the node fields; a
    shadow, which serves nothing, writes only `ha`; a solo node has no `ha`. Absent: None."""

    pid: int | None = None
    uptime_s: float | None = None  #: s
    service: str | None = None  #: HOST:PORT it advertises (Via, Record-Route)
    policy: str | None = None  #: the load-balancing policy
    dialogs: int | None = None  #: dialogs held (all states)
    members: list[MemberStatus] = msgspec.field(default_factory=list)  #: in config order
    counters: Counters | None = None  #: the core's counters (`core.counters.Counters`)
    internal_errors: int | None = None  #: events the core raised on (dropped, logged)
    send_errors: int | None = None  #: send errors the socket reported
    # the sender's counters, `runtime.sender.COUNTERS`
    send_failures: int | None = None
    family_mismatches: int | None = None
    unresolvable: int | None = None
    resolution_overflow: int | None = None
    self_loops: int | None = None
    resolutions: int | None = None
    #: TCP at the service address: connections live, and the counters of `runtime.streams.COUNTERS`
    tcp_connections: int | None = None
    tcp: dict[str, int] | None = None
    replication: ReplicationStatus | None = None  #: a primary with a replication link
    records: RecordsStatus | None = None  #: call records, when `[cdr]` is on
    ha: HaStatus | None = None  #: a node of an HA pair


class NotAStatusDocument(ValueError):
    """A file that is not JSON, or JSON that is not a status document."""


def snapshot(
    gateway: Gateway,
    *,
    started_at: float,
    now: float,
    internal_errors: int | None = None,
    send_errors: int | None = None,
    sender: dict[str, int] | None = None,
    replication: ReplicationStatus | None = None,
    tcp_connections: int | None = None,
    tcp: dict[str, int] | None = None,
    records: RecordsStatus | None = None,
) -> StatusDocument:
    """Counters plus live state: dialogs held, active calls and health per member; the
    serving shell adds its own error counts, its sender's counters and replication."""
    membership = gateway.membership
    members = [
        MemberStatus(
            address=format_address(spec.address),
            up=health.up,
            calls=gateway.counters.calls_per_member[index],
            active_calls=gateway.table.active_per_member[index],
            missed_probes=health.misses,
            weight=spec.weight,
            transport=spec.transport,
            draining=membership.draining[index],
            retired=membership.retired[index],
        )
        for index, (spec, health) in enumerate(zip(membership.specs, gateway.health.members, strict=True))
    ]
    document = StatusDocument(
        pid=os.getpid(),
        uptime_s=round(now - started_at, 3),
        service=gateway.sent_by,
        policy=gateway.config.policy,
        dialogs=len(gateway.table),
        members=members,
        counters=copy.deepcopy(gateway.counters),
        internal_errors=internal_errors,
        send_errors=send_errors,
        replication=replication,
        tcp_connections=tcp_connections,
        tcp=dict(tcp) if tcp is not None else None,
        records=records,
    )
    return msgspec.structs.replace(document, **sender) if sender else document


def ha_status(
    machine: RoleMachine, replication: ReplicationConfig, follower: Follower | None,
    takeovers: list[TakeoverRecord], *, gated_before: int, heartbeats_refused: int, detector_stalls: int,
    peering: Peering | None = None,
) -> HaStatus:  # fmt: skip
    """The `ha` section: the role machine, the follower (a shadow's) and its tap, the takeovers."""
    tap = follower.tap if follower is not None else None
    shadow = None
    if follower is not None:
        replica = follower.replica
        shadow = FollowerStatus(synced=follower.synced, applied=replica.applied_seq,
                                released=replica.released_seq, dialogs=len(replica.gateway.table),
                                pending_entries=follower.pending_entries, **follower.stats)  # fmt: skip
    return HaStatus(
        role=machine.role.value, epoch=machine.epoch, mode=replication.mode, peer_alive=machine.peer_alive,
        heartbeats_refused=heartbeats_refused, detector_stalls=detector_stalls,
        gated_outputs=gated_before + (follower.stats["gated_outputs"] if follower else 0),
        takeovers=takeovers, input=replication.input, arbiter_peer_alive=machine.arbiter_alive,
        **machine.counters,
        tap=None if tap is None else TapStatus(buffered=len(tap), received=tap.received, matched=tap.matched,
                                               pruned=tap.pruned),
        shadow=shadow,
        alarms=[peering.alarm] if peering is not None and peering.alarm else [],
        link_refused={reason: count for reason, count in peering.refused.items() if count} if peering else {},
    )  # fmt: skip


def encode(document: StatusDocument) -> bytes:
    """The file's bytes: indented JSON and a newline."""
    return msgspec.json.format(msgspec.json.encode(document)) + b"\n"


def write_atomically(path: Path, document: StatusDocument) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(encode(document))
    os.replace(temporary, path)


#: Built once, at import: msgspec builds a type's decoding info on its first use, and two
#: threads decoding a status document for the first time at once crashed the lab's experiment
#: runner (SIGSEGV in msgspec._core while the other thread resolved the annotations).
_STATUS_DECODER = msgspec.json.Decoder(StatusDocument)


def read_status(path: Path) -> StatusDocument:
    """The status document in `path`. Raises OSError when it cannot be read and
    `NotAStatusDocument` (a ValueError) when it is not a status document. Thread-safe."""
    data = path.read_bytes()
    try:
        return _STATUS_DECODER.decode(data)
    except msgspec.DecodeError as error:
        raise NotAStatusDocument(f"{path}: not a sipshadow status document ({error})") from None

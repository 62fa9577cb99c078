"""The HA shell: runs one node's `RoleMachine` (`sipshadow.ha.roles`) and carries out its actions.

It decides nothing. Heartbeats, the arbiter, its own timers and the outcome of each action
become the machine's inputs; the actions it returns (serve, follow, take over, step down,
fence) run here, one at a time and in order, on the loop.

The primary serves: its core's events go through the recorder (log, output commit) to the
shadow. The shadow serves nothing: its follower replays the primary's log into a replica
core whose outputs are gated (counted, never sent). Takeover: claim the service address,
hand the replica's core over to a live entropy source, re-send the outputs the old primary
may not have released, process the tapped datagrams it never logged, and serve with the
replication server open for the next shadow. Mode `network` takes the address with an empty
core; mode `none` never takes over.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from collections.abc import Callable
from typing import Any

from sipshadow.core import Gateway, SendDatagram
from sipshadow.core.actions import Address
from sipshadow.detect.heartbeat import Heartbeat, HeartbeatDetector
from sipshadow.determinism import RecordingEntropy, SystemEntropy
from sipshadow.ha import roles
from sipshadow.ha.roles import Role, RoleMachine
from sipshadow.replication.follower import Follower
from sipshadow.replication.recorder import Recorder
from sipshadow.replication.tap import TapBuffer
from sipshadow.runtime.config import NodeConfig, ReplicationConfig
from sipshadow.runtime.identity import LinuxIdentity, LoopbackIdentity, ServiceIdentity
from sipshadow.runtime.node import DatagramEndpoint, Node, open_endpoint
from sipshadow.runtime.primary_link import PrimaryLink, ShadowConnection
from sipshadow.runtime.shadow_link import ShadowLink

log = logging.getLogger("sipshadow.ha")

BIND_RETRY_S = 0.1  # a killed owner frees the port at once; a live one means no takeover


class HaNode:
    """One member of the pair: the role machine, and what each role runs."""

    def __init__(self, config: NodeConfig) -> None:
        assert config.replication is not None
        self.config = config
        self.replication: ReplicationConfig = config.replication
        replication = self.replication
        window_s = replication.heartbeat_interval_s * replication.heartbeat_misses
        self.machine = RoleMachine(
            node_id=replication.node_id,
            configured_primary=replication.role == "primary",
            mode=replication.mode,
            window_s=window_s,
            listen_s=window_s + replication.heartbeat_interval_s,
            has_arbiter=replication.arbiter_listen is not None and replication.arbiter_peer is not None,
        )
        self.tap_mode = replication.input == "tap"
        self.identity: ServiceIdentity = (
            LinuxIdentity(replication.vip_interface, config.listen[0]) if self.tap_mode else LoopbackIdentity()
        )
        self.node: Node | None = None
        self.server: asyncio.AbstractServer | None = None
        self.follower: Follower | None = None
        self.link: ShadowLink | None = None
        self.detector: HeartbeatDetector | None = None
        self.arbiter: HeartbeatDetector | None = None
        self.takeovers: list[dict[str, Any]] = []
        self.gated_before = 0  # outputs gated by earlier followers
        self._tap_socket: tuple[asyncio.DatagramTransport, DatagramEndpoint] | None = None
        self._actions: asyncio.Queue[roles.Action] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self._settled = asyncio.Event()

    @property
    def role(self) -> str:
        return self.machine.role.value

    @property
    def epoch(self) -> int:
        return self.machine.epoch

    # -- inputs ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the detectors and the machine; return once this node serves or follows."""
        replication = self.replication
        self._worker = asyncio.get_running_loop().create_task(self._run_actions())
        self.detector = await self._heartbeats(
            replication.listen, replication.peer, self._on_peer_beat, lambda: self.input(roles.PeerSilent())
        )
        if self.machine.has_arbiter:
            assert replication.arbiter_listen is not None and replication.arbiter_peer is not None
            self.arbiter = await self._heartbeats(
                replication.arbiter_listen, replication.arbiter_peer,
                lambda beat: self.input(roles.ArbiterBeat()), lambda: self.input(roles.ArbiterSilent()),
            )  # fmt: skip
        self.input(roles.Started(configured_primary=replication.role == "primary"))
        await self._settled.wait()

    def input(self, event: roles.Input) -> None:
        """Feed the role machine; its actions run in order on the action worker."""
        for action in self.machine.step(event):
            self._actions.put_nowait(action)

    async def _heartbeats(
        self, listen: Address, peer: Address, on_beat: Callable[[Heartbeat], None], on_dead: Callable[[], None]
    ) -> HeartbeatDetector:
        """A detector on one link: the replication link, or the service network (the arbiter)."""
        detector = HeartbeatDetector(
            key=self.replication.key,
            peer=peer,
            interval_s=self.replication.heartbeat_interval_s,
            misses=self.replication.heartbeat_misses,
            beat=self._beat,
            on_peer_beat=on_beat,
            on_peer_dead=on_dead,
            on_stall=lambda seconds: self.input(roles.Stalled(seconds)),
        )
        await detector.start(listen)
        return detector

    def _beat(self) -> Heartbeat:
        released = self.node.replicator.recorder.released if self.node and self.node.replicator else 0
        return Heartbeat(self.replication.node_id, self.machine.epoch, self.machine.role.value, released)

    def _on_peer_beat(self, beat: Heartbeat) -> None:
        if beat.role == Role.PRIMARY.value and self.follower is not None:
            self.follower.note_released(beat.released, asyncio.get_running_loop().time())
        self.input(roles.PeerBeat(beat.node_id, beat.role, beat.epoch))

    def _later(self, seconds: float, event: roles.Input) -> None:
        self._timers.append(asyncio.get_running_loop().call_later(seconds, self.input, event))

    # -- actions --------------------------------------------------------------------------

    async def _run_actions(self) -> None:
        while True:
            action = await self._actions.get()
            try:
                await self._run(action)
            except Exception:
                log.exception("HA action %s failed", action)

    async def _run(self, action: roles.Action) -> None:
        if isinstance(action, roles.Listen):
            assert self.detector is not None
            self.detector.send_now()
            self._later(action.seconds, roles.ListenElapsed())
        elif isinstance(action, roles.ServePrimary):
            recorder = RecordingEntropy(SystemEntropy())
            await self._serve(Gateway(self.config.gateway, recorder), recorder, 0)
            self._settled.set()
        elif isinstance(action, roles.Follow):
            await self._follow()
            self._settled.set()
        elif isinstance(action, roles.TakeOver):
            await self._take_over(action.epoch)
        elif isinstance(action, roles.DropShadow):
            if self.node is not None and self.node.replicator is not None:
                self.node.replicator.shadow_gone()
        elif isinstance(action, roles.StepDown):
            log.error("a primary serves in epoch %d: stepping down to rejoin as the shadow", action.epoch)
            await self._stop_serving()
        elif isinstance(action, roles.Fence):
            log.error("this node's loop stalled: fenced (no input) until the peer is heard")
            if self.node is not None:
                self.node.fence()
        elif isinstance(action, roles.Unfence):
            log.warning("fence lifted: serving on")
            if self.node is not None:
                self.node.unfence()
        elif isinstance(action, roles.Hold):
            self._later(action.seconds, roles.HoldElapsed())

    async def _follow(self) -> None:
        """The shadow: silent on the service address, following the primary's log (active)."""
        replication = self.replication
        tap = None
        if self.tap_mode:
            self.identity.silence()
            tap = TapBuffer(horizon_s=replication.tap_horizon_s)
            self._tap_socket = await open_endpoint(self.config.listen, self._on_tap)
        if replication.mode == "active":
            self.follower = Follower(self.config.gateway, node_id=replication.node_id, tap=tap)
            self.link = ShadowLink(self.follower, replication.peer, key=replication.key, epoch=lambda: self.epoch)
            self.link.start()
        log.info("serving as SHADOW (%s mode) of %s:%d", replication.mode, *replication.peer)

    def _on_tap(self, data: bytes, source: tuple[str, int]) -> None:
        """A copy of a datagram sent to the primary, from the switch's mirror."""
        if self.link is not None:
            self.link.tapped(data, source[:2])

    async def _serve(
        self,
        gateway: Gateway,
        recorder: RecordingEntropy,
        start_seq: int,
        resend: list[SendDatagram] | None = None,
        backlog: list[tuple[bytes, Address]] | None = None,
    ) -> None:
        """Serve: the socket, then what a takeover owes the world, then the replication server."""
        replication = self.replication
        node = Node(gateway)
        log_recorder = Recorder(
            gateway, recorder, epoch=self.epoch, start_seq=start_seq, output_commit=replication.output_commit,
            commit_timeout_s=replication.commit_timeout_s, with_payload=not self.tap_mode,
        )  # fmt: skip
        link = node.replicator = PrimaryLink(log_recorder, node.send, key=replication.key)
        if self._tap_socket is not None:
            node.adopt(*self._tap_socket)  # the socket that took the tap serves from now on
            self._tap_socket = None
        else:
            await self._bind(node)
        node.send(resend or [])
        for data, source in backlog or []:  # the detection window's messages, in arrival order
            node.on_datagram(data, source)
        host, port = replication.listen
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: ShadowConnection(link), host, port, reuse_address=True)
        self.node = node
        log.info("serving as PRIMARY on %s:%d (epoch %d)", *self.config.listen, self.epoch)

    async def _bind(self, node: Node) -> None:
        """Bind the service address; right after a kill the old owner may hold it a moment."""
        deadline = time.monotonic() + BIND_RETRY_S
        while True:
            try:
                await node.start(self.config.listen)
                return
            except OSError as error:
                if error.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.002)

    async def _take_over(self, epoch: int) -> None:
        """Become the primary: the service address, the core as it stands, the unsent outputs."""
        started = time.perf_counter()
        verdict_wall = time.time()  # wall clock, so a lab can line it up with the fault it injected
        network = self.identity.claim()
        recorder = RecordingEntropy(SystemEntropy())
        follower, self.follower = self.follower, None
        if follower is not None:
            handover = follower.hand_over(recorder)
            self.gated_before += follower.stats["gated_outputs"]
            gateway, start_seq = handover.gateway, handover.start_seq
            resend, unlogged, stranded = handover.resend, handover.unlogged, handover.stranded
        else:
            gateway, start_seq, resend, unlogged, stranded = Gateway(self.config.gateway, recorder), 0, [], [], 0
        if self.link is not None:
            await self.link.close()
            self.link = None
        try:
            await self._serve(gateway, recorder, start_seq, resend, unlogged)
        except OSError as error:  # the address is still owned: the "dead" primary was only slow
            log.error("takeover aborted (%s): rejoining as the shadow", error)
            self.takeovers.append({"epoch": epoch, "aborted": str(error)})
            self.input(roles.TakeoverFailed(str(error)))
            return
        elapsed_ms = (time.perf_counter() - started) * 1000
        self.takeovers.append({"epoch": epoch, "ms": round(elapsed_ms, 2), "resent": len(resend),
                               "unlogged_processed": len(unlogged), "stranded_entries": stranded,
                               "dialogs": len(gateway.table), "entry": start_seq,
                               "network_ms": network, "verdict_at": verdict_wall,
                               "serving_at": time.time()})  # fmt: skip
        log.warning(
            "TOOK OVER as primary (epoch %d) in %.1f ms: %d dialogs, resent %d, %d unlogged tapped datagrams, "
            "from entry %d", epoch, elapsed_ms, len(gateway.table), len(resend), len(unlogged), start_seq,
        )  # fmt: skip
        self.input(roles.TakeoverDone())

    async def _stop_serving(self) -> None:
        """Step down: another node owns the calls now, so what this one still held is dropped."""
        if self.server is not None:
            self.server.close()
            self.server = None
        if self.node is not None:
            if self.node.replicator is not None:
                self.node.replicator.abandon()
            self.node.close()
            self.node = None
        await asyncio.sleep(0)  # the closed socket lets go of the service address

    # -- status and stop ------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        machine = self.machine
        follower = self.follower
        ha: dict[str, Any] = {
            "role": self.role, "epoch": self.epoch, "mode": self.replication.mode,
            "peer_alive": machine.peer_alive,
            "heartbeats_refused": self.detector.refused if self.detector else 0,
            "detector_stalls": self.detector.stalls if self.detector else 0,
            "gated_outputs": self.gated_before + (follower.stats["gated_outputs"] if follower else 0),
            "takeovers": self.takeovers, "input": self.replication.input,
            "arbiter_peer_alive": machine.arbiter_alive, **machine.counters,
        }  # fmt: skip
        tap = follower.tap if follower is not None else None
        if tap is not None:
            ha["tap"] = {"buffered": len(tap), "received": tap.received, "matched": tap.matched, "pruned": tap.pruned}
        if follower is not None:
            replica = follower.replica
            ha["shadow"] = {"synced": follower.synced, "applied": replica.applied_seq,
                            "released": replica.released_seq, "dialogs": len(replica.gateway.table),
                            "pending_entries": follower.pending_entries, **follower.stats}  # fmt: skip
        if self.node is not None:
            document = self.node.status()
            document["ha"] = ha
            return document
        return {"ha": ha}

    async def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        if self.detector is not None:
            self.detector.close()
        if self.arbiter is not None:
            self.arbiter.close()
        if self._tap_socket is not None:
            self._tap_socket[0].close()
        if self.link is not None:
            await self.link.close()
        if self.server is not None:
            self.server.close()
        if self.node is not None:
            if self.node.replicator is not None:
                self.node.replicator.close()
            self.node.close()

"""The event clock carries on across a takeover: the new primary's core keeps its deadlines,
which are on the old primary's clock, even when its own host's monotonic clock is elsewhere."""

from __future__ import annotations

import asyncio

from sipshadow.core import Gateway, GatewayConfig, MemberSpec, MessageReceived
from sipshadow.determinism import SystemEntropy
from sipshadow.runtime.node import Node
from tests.unit.messages import ALG, CALLER, MEMBERS, request, response_to
from tests.unit.replication_pair import Pair

CONFIG = GatewayConfig(ALG, tuple(MemberSpec(m) for m in MEMBERS), probe_interval_s=0, early_timeout_s=200.0)
#: The old primary's host booted this long before the shadow's: its monotonic clock is ahead.
AHEAD_S = 86_400.0 * 30


def test_the_shadow_learns_how_far_the_primarys_clock_is_from_its_own() -> None:
    pair = Pair(CONFIG)
    pair.connect()
    pair.deliver()
    pair.now = 10.0  # the shadow's clock; the primary's events say AHEAD_S later
    [forwarded] = pair.event(MessageReceived(request("INVITE"), CALLER, AHEAD_S + 10.0))
    pair.event(MessageReceived(response_to(forwarded.data, 180, "Ringing"), forwarded.destination, AHEAD_S + 10.5))
    pair.deliver()
    assert pair.follower.clock_offset == AHEAD_S + 0.5  # the latest entry's time less its arrival
    handover = pair.take_over()
    assert handover.clock_offset == AHEAD_S + 0.5 and handover.last_now == AHEAD_S + 10.5


def test_a_node_on_the_old_primarys_clock_stamps_events_and_arms_timers_on_it() -> None:
    async def scenario() -> tuple[float, float, float]:
        loop = asyncio.get_running_loop()
        node = Node(Gateway(CONFIG, SystemEntropy(1)))
        node.clock_offset = AHEAD_S
        node.on_datagram(request("INVITE"), CALLER)
        call = node.gateway.table.get("call-1@caller")
        assert call is not None
        [attempt] = call.attempts.values()
        timer = node._timer
        assert timer is not None
        when = timer.when()
        node.close()
        return attempt.expires_at, when, loop.time()

    expires_at, when, now = asyncio.run(scenario())
    assert abs(expires_at - (now + AHEAD_S + 200.0)) < 1.0  # Timer C on the old primary's clock
    assert abs(when - (now + 200.0)) < 1.0  # armed on this loop's clock: 200 s from now, not a month

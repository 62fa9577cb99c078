"""A handoff the shadow never completes must not leave the primary fenced: it serves on, and says
why. Two real HA nodes in one loop on loopback (forward mode); the shadow is made deaf to the
Handoff, as a shadow wedged at that moment would be."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from sipshadow.runtime.ha import HandoffRefused, HaNode
from tests.unit.test_status_document import pair_configs, poke, until


def test_a_handoff_nobody_takes_leaves_the_primary_serving(tmp_path: Path) -> None:
    primary_config, shadow_config = pair_configs(tmp_path)
    replication = dataclasses.replace(primary_config.replication, handover_timeout_s=0.3)  # type: ignore[arg-type]
    primary_config = dataclasses.replace(primary_config, replication=replication)

    async def scenario() -> tuple[str, str, int, int]:
        primary, shadow = HaNode(primary_config), HaNode(shadow_config)
        try:
            await primary.start()
            await shadow.start()
            await until(lambda: shadow.following is not None and shadow.following.follower is not None
                        and shadow.following.follower.synced and primary.serving.link.recorder.attached)  # fmt: skip
            assert shadow.following is not None and shadow.following.link is not None
            shadow.following.link.on_handoff = None  # deaf to the Handoff
            with pytest.raises(HandoffRefused) as refused:
                await primary.hand_off(leaving=False)
            assert primary.serving is not None
            before = primary.serving.node.gateway.counters.rejected.get(483, 0)
            poke(primary_config.listen)  # Max-Forwards 0: answered 483 by a node that takes input
            await until(lambda: primary.serving.node.gateway.counters.rejected.get(483, 0) > before)  # type: ignore[union-attr]
            return str(refused.value), primary.role, shadow.machine.epoch, before
        finally:
            await shadow.close()
            await primary.close()

    why, role, shadow_epoch, _ = asyncio.run(scenario())
    assert "did not take over" in why and "serving on" in why
    assert role == "primary" and shadow_epoch == 0

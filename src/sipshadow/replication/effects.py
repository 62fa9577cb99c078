"""What a replication state machine asks its shell to do, after it took an input."""

from __future__ import annotations

from dataclasses import dataclass, field

from sipshadow.core import SendMessage
from sipshadow.replication.wire import Message


@dataclass(slots=True)
class Effects:
    """The shell's orders, to be carried out in field order.

    `send`: datagrams the primary may now let out to the SIP side (released), in send order.
    `write`: messages for the peer on the replication link, in order.
    `drop`: if not empty, why the replication link must be closed now (the shadow then
    reconnects and repairs itself by state transfer). `lapse`: if not empty, why output
    commit no longer waits for the shadow (the link stays; it is waited for again once it has
    caught up).
    """

    send: list[SendMessage] = field(default_factory=list)
    write: list[Message] = field(default_factory=list)
    drop: str = ""
    lapse: str = ""

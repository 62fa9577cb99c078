"""The gateway core: a pure, deterministic state machine for a dialog-aware SIP ALG.

Rules (the reason active replication works; `tests/unit/test_purity.py` guards them):

1. Nothing in `sip/` or `core/` imports a clock, randomness, sockets, threads or the OS.
2. Every input is an event (`core.events`) that carries `now`; `Gateway.handle(event)` is the
   only way to change state, and it returns the datagrams to send (`core.actions`) and the
   call records to keep (`core.records`), both as outputs.
3. Every other non-deterministic value (a weighted draw) comes from the injected `Entropy`
   (`core.entropy`); the primary records it, the shadow replays it.
4. Timers are one deadline (`Gateway.next_deadline()`); the adaptor delivers a `TimerExpired`
   event when it passes. Which timers fire is decided here, from `now`, never by the adaptor.
5. Adaptors (runtime, replication) make no decisions: they move bytes and time in and out.

Theory of operation: a request is validated whole (§8.2, §16.3) before anything changes. A
new INVITE, SUBSCRIBE or REFER is dispatched to a member by the policy (a known Call-ID keeps
its member) and Record-Routed; it opens an attempt, and its responses open dialogs keyed by
Call-ID + From tag + To tag, several per Call-ID when a call forks. A request with a To tag
must match one of those dialogs by tags, in either direction, else 481; a CANCEL goes where the
request it cancels went; a request with no To tag goes out of dialog to a member. Responses
return along the Via stack. The gateway is transaction-stateless (§16.11): branches are
derived from the incoming branch, so a retransmission, a CANCEL and an ACK for a non-2xx
response take the same branch as their INVITE.
"""

from sipshadow.core.actions import SendMessage
from sipshadow.core.config import GatewayConfig, MemberSpec
from sipshadow.core.entropy import Entropy
from sipshadow.core.events import Event, MessageReceived, TimerExpired
from sipshadow.core.gateway import Gateway

__all__ = [
    "Entropy",
    "Event",
    "Gateway",
    "GatewayConfig",
    "MemberSpec",
    "MessageReceived",
    "SendMessage",
    "TimerExpired",
]

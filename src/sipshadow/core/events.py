"""The inputs of the core. Each carries `now`, so recording the event records the time."""

from dataclasses import dataclass

from sipshadow.core.actions import UDP, Address
from sipshadow.core.config import MemberSpec


@dataclass(slots=True, init=False, unsafe_hash=True)
class MessageReceived:
    """A SIP message arrived on the service address from `source` (RFC 3261 §18.2.1).

    `data` is one UDP datagram's payload, or one message framed off a TCP connection
    (`sip.stream`): any bytes at all (garbage is counted, never raised); `source` is the
    sender's (IP, port), for TCP the connection's peer, which names the connection while it
    lives; `now` is seconds on the event clock (the node's loop clock, monotonic; on the
    shadow, the primary's value from the log); `transport` is `UDP` or `TCP`.
    """

    data: bytes
    source: Address
    now: float
    transport: str

    def __init__(self, data: bytes, source: Address, now: float, transport: str = UDP) -> None:
        # written out, not generated: one is made per message, and compiled (mypyc) this
        # __init__ is native where the dataclass one, frozen or not, is interpreted Python.
        # Treat it as immutable all the same.
        self.data = data
        self.source = source
        self.now = now
        self.transport = transport


@dataclass(frozen=True, slots=True)
class TimerExpired:
    """The deadline the core last asked for (`Gateway.next_deadline`) has passed.

    `now` as in `MessageReceived`. An early or spurious one is harmless: only what is due
    by `now` fires.
    """

    now: float


@dataclass(frozen=True, slots=True)
class Reconfigure:
    """An operator's reload: the cluster's members (the config's list, in order), the policy
    (one of `core.config.POLICIES`) and the health settings (`GatewayConfig`'s meaning).

    Members are matched by address (`core.membership.Membership.reconcile`): kept ones keep
    their calls and index, new ones are appended, absent ones retire (no new calls, theirs
    finish). The shell validates before it builds one; the core takes any as given. `now` as
    in `MessageReceived`. An event, not a method call, so the shadow applies it at the same
    point of the log.
    """

    members: tuple[MemberSpec, ...]
    policy: str
    probe_interval_s: float
    probe_misses: int
    now: float


@dataclass(frozen=True, slots=True)
class SetDraining:
    """Drain (`draining` True) or undrain the member at `member`: a drained member takes no new
    call and keeps the ones it holds. An address that is no member changes nothing."""

    member: Address
    draining: bool
    now: float


@dataclass(frozen=True, slots=True)
class SetClock:
    """The wall clock's anchor for call records (`core.records`): UTC seconds since the epoch =
    event clock + `utc_offset`. The primary's shell sends one when it starts serving and when
    the clocks drift apart; an event, so the shadow dates records exactly as the primary."""

    utc_offset: float
    now: float


#: What the shell changes in a running core (`sipshadow ctl reload | drain | undrain`, the clock).
Control = Reconfigure | SetDraining | SetClock
Event = MessageReceived | TimerExpired | Reconfigure | SetDraining | SetClock

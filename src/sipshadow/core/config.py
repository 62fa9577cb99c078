"""The core's settings: plain values, validated by whoever builds them (runtime.config)."""

from dataclasses import dataclass, field

from sipshadow.core.actions import UDP, Address

POLICIES = ("round-robin", "least-active-calls", "weighted-random", "call-id-hash")


@dataclass(frozen=True, slots=True)
class MemberSpec:
    """A cluster member: where it listens (IP, port), its share of new calls under
    weighted-random (a positive integer, relative to the other members' weights), and the
    transport the ALG reaches it by (`UDP` or `TCP`)."""

    address: Address
    weight: int = 1
    transport: str = UDP


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """What the core needs to know; every duration is in seconds of the event clock.

    `service` is the address the ALG puts in its Via and Record-Route (the VIP); `aliases`
    are further addresses that name it (the listen address, if different). `policy` is one
    of `POLICIES`; `probe_interval_s` 0 switches probing off; `probe_misses` counts probe
    rounds. Timeouts: `early_timeout_s` is Timer C (§16.6 item 11), `confirmed_timeout_s`
    reaps a confirmed dialog with no request, `terminated_linger_s` keeps an ended one (64*T1).
    Replicas need the same config: the state names members by index, in this order.

    `branch_key` keys the MAC in the ALG's Via branches (§16.11 stateless branch, checked on
    every response, §16.7), so a response can be forged only by someone who saw the request.
    The shell always passes a real secret: derived from the pair key in an HA pair (both
    replicas must compute the same branches), drawn at start on a solo node. The default
    b"" (an unkeyed MAC, forgeable by anyone who reads this code) is for unit tests only.

    `call_records`: make a call record (`core.records`) for every INVITE attempt, as an output.

    `large_requests_over_tcp`: a request for a UDP member larger than 1300 bytes goes over TCP
    (§18.1.1, a MUST when the path MTU is unknown; off for members that do not listen on TCP).
    """

    service: Address
    members: tuple[MemberSpec, ...]
    policy: str = "round-robin"
    probe_interval_s: float = 1.0
    probe_misses: int = 3
    early_timeout_s: float = 200.0
    confirmed_timeout_s: float = 7200.0
    terminated_linger_s: float = 32.0
    aliases: tuple[Address, ...] = field(default=())
    branch_key: bytes = field(default=b"", repr=False)
    large_requests_over_tcp: bool = True
    call_records: bool = False

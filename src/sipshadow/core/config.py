"""The core's settings: plain values, validated by whoever builds them (runtime.config)."""

from dataclasses import dataclass, field

from sipshadow.core.actions import Address

POLICIES = ("round-robin", "least-active-calls", "weighted-random", "call-id-hash")


@dataclass(frozen=True, slots=True)
class MemberSpec:
    """A cluster member: where it listens and its share of new calls under weighted-random."""

    address: Address
    weight: int = 1


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """What the core needs to know; every duration is in seconds of the event clock."""

    service: Address
    members: tuple[MemberSpec, ...]
    policy: str = "round-robin"
    probe_interval_s: float = 1.0
    probe_misses: int = 3
    early_timeout_s: float = 200.0
    confirmed_timeout_s: float = 7200.0
    terminated_linger_s: float = 32.0
    aliases: tuple[Address, ...] = field(default=())

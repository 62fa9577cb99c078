"""The injected sources of non-determinism: the clock and the draws the core may make."""

from sipshadow.determinism.system import SystemClock, SystemEntropy

__all__ = ["SystemClock", "SystemEntropy"]

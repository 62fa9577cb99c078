"""The injected sources of non-determinism: the clock and the draws the core may make."""

from sipshadow.determinism.recording import RecordingEntropy, ReplayingEntropy, ReplayMismatch
from sipshadow.determinism.system import SystemClock, SystemEntropy

__all__ = ["RecordingEntropy", "ReplayMismatch", "ReplayingEntropy", "SystemClock", "SystemEntropy"]

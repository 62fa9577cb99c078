"""The injected sources of non-determinism: the draws the core may make (time comes in each event)."""

from sipshadow.determinism.recording import RecordingEntropy, ReplayingEntropy, ReplayMismatch
from sipshadow.determinism.system import SystemEntropy

__all__ = ["RecordingEntropy", "ReplayMismatch", "ReplayingEntropy", "SystemEntropy"]

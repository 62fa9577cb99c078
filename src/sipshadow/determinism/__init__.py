"""The injected sources of non-determinism: the draws the core may make (time comes in each event).

A draw is one `Entropy.random()` call: a float uniform in [0.0, 1.0). A solo node draws from
`SystemEntropy`; the primary wraps it in `RecordingEntropy`, which keeps each event's draws
for that event's log entry; the shadow's core draws from `ReplayingEntropy`, which hands out
exactly the logged draws and raises `ReplayMismatch` when the core asks for more or fewer.
"""

from sipshadow.determinism.recording import RecordingEntropy, ReplayingEntropy, ReplayMismatch
from sipshadow.determinism.system import SystemEntropy

__all__ = ["RecordingEntropy", "ReplayMismatch", "ReplayingEntropy", "SystemEntropy"]

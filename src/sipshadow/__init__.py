"""sipshadow: a highly available SIP Application Level Gateway."""

__version__ = "0.1.0"

from sipshadow import _native  # noqa: F401  (before any other module: the compiled build or the sources)

"""sipshadow: a highly available SIP Application Level Gateway."""

__version__ = "0.1.0"

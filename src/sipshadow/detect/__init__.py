"""Failure detection between the pair: heartbeats on their own link."""

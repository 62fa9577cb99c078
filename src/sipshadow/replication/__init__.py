"""Active replication: the primary's event log, its wire format, and the shadow's replay."""

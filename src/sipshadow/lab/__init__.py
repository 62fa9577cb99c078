"""The lab: SIPp and Kamailio drivers, the loopback run and (later) the failover experiment."""

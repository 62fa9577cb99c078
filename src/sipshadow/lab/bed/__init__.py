"""The namespace test bed: hosts and a switch in network namespaces, its port mirror, fault injection."""

"""What production runs on Linux: nftables silent mode, the shadow's tap accept chain, VIP + gratuitous ARP."""

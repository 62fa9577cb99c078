"""Linux side of sipshadow: tap rules, nftables silent mode, VIP + gratuitous ARP, netns test bed."""

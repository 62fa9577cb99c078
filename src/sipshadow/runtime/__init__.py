"""The asyncio shell around the core: sockets, the event clock, config, status output."""

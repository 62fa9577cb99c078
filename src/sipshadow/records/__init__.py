"""Call records on the shell's side: a journal on local disk, then a store (SQLite or
PostgreSQL), written off the event loop, idempotent on the record's identity."""

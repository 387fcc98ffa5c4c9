"""The durable store-and-forward spool (DESIGN decision 6, `ack: spool`).

- `state.py`: pure rules: item states and their moves, the retry schedule, the circuit
  breaker, the limit checks and the failover decision (no I/O, no clock, no randomness).
- `store.py`: Part-10 files and the SQLite index, with group commit (thread offloaded);
  every change of an item is one of its named operations (`Change`), checked against
  state.py's transitions: the only SQL of the spool.
- `ingest.py`: a C-STORE from the relay into the spool, answered once it is durable.
- `dispatcher.py`: per-backend senders that deliver spooled items, with retries.
- `ops.py`: list / show / retry / purge, for the CLI and the admin API.
- `supervisor.py`: runs the long-running tasks (committer, sweep, senders); a task that
  fails is logged, counted and restarted with backoff.
"""

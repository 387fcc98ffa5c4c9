"""Providers: where backends come from, merged into one snapshot (as Traefik's providers).

The file defines everything (listeners, pools, routes, middlewares and backends); the admin
API (`api.py`: kept in `state_dir`) and Docker (`labels.py` the labels → a backend,
`docker.py` the watcher) add backends to the file's pools. `merge.py` joins them: a backend
name two providers define is a conflict that fails only that definition.
"""

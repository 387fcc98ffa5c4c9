"""What each log event means, for the log-events reference. Every event the code logs
must have an entry (tests/unit/test_reference_pages.py checks both ways)."""

from __future__ import annotations

MEANINGS: dict[str, str] = {
    "admin.audit": "A request to the admin API that may change something (who, what, "
    "the answer); `user` is `token:` and 8 hex digits of its digest, the basic-auth user, "
    "or `anonymous`.",
    "admin.backend": "An operator drained, disabled, enabled, added or removed a backend.",
    "admin.refused": "The admin listener refused a request: a Host not its own (DNS "
    "rebinding, 421) or a request aiohttp cannot parse (400).",
    "admin.reload": "A configuration reload finished (`result=ok|error`, `source=api|sighup|"
    "watch`).",
    "admin.request": "A read-only admin API request (the access log of the admin listener).",
    "admin.state_error": "The admin API's backends could not be written to `state_dir`; the "
    "add or remove was not made.",
    "admin.spool": "An operator retried or purged spooled items through the admin API.",
    "admin.unauthorized": "An admin API request without valid credentials.",
    "admin.watch": "The configuration file is watched for changes.",
    "docker.backend": "A container's backend joined its pool (`change=joined`: it takes work "
    "after its first passed check) or left it (`change=left`: stopped, stopping, unhealthy, "
    "labels changed; work in flight finishes).",
    "docker.connected": "The Docker provider listed the engine's running containers and "
    "follows its event stream (after a start or a reconnection: a resync).",
    "docker.disconnected": "The Docker provider lost (or could not reach) the engine; it "
    "retries with backoff, and the containers' backends stay meanwhile.",
    "provider.conflict": "Two providers (or one twice) define one backend name: this "
    "definition is not served; the file wins over the API, the API over Docker.",
    "provider.error": "A provider's backend cannot be used (a container's bad label, a pool "
    "the file does not define); only that backend is skipped.",
    "relay.failed": "dicomlb itself failed while serving a message (a defect: please report "
    "it with this line); the client's association is aborted at once rather than left "
    "waiting, and the other associations go on.",
    "association.aborted": "A client association ended with an A-ABORT.",
    "association.accepted": "A client association was accepted (contexts, max PDU).",
    "association.artim_expired": "A client connected but did not complete the association "
    "in time (ARTIM).",
    "association.closed": "A client association ended: the DICOM access log line (messages, "
    "bytes, duration, outcome).",
    "association.protocol_error": "A client broke the upper-layer protocol; it was aborted.",
    "association.rejected": "A client association was rejected (PS3.8 result, source, reason, "
    "and why in words).",
    "association.unexpected_response": "A client sent a response dicomlb was not waiting for.",
    "backend.declined": "A backend refused a message's presentation context (at DEBUG when "
    "that was known before).",
    "backend.down": "A backend was taken out of its pools (`cause` check, passive, "
    "fail_timeout or admin).",
    "backend.unreachable": "A backend could not be reached for a message or request.",
    "backend.up": "A backend is back in its pools.",
    "commitment.ambiguous_requester": "A storage commitment report could go to more than one "
    "requester; the one chosen is named.",
    "commitment.failed": "A storage commitment request or report was refused.",
    "commitment.forwarded": "A storage commitment request was forwarded to the backend "
    "holding the instances.",
    "commitment.reported": "A backend's storage commitment report was relayed to the requester.",
    "commitment.probed": "No instance of a storage commitment request was known here (stored "
    "through another dicomlb instance, or directly): the backends were asked by C-FIND "
    "which hold them; the request goes to the one holding most.",
    "commitment.spread": "A commitment request's instances are on several backends.",
    "commitment.unlocated": "No backend could be found for a commitment request's instances.",
    "config.restart_needed": "A reload changed keys that take effect only after a restart.",
    "config.warning": "The configuration is valid but suspicious (a route an earlier one "
    "shadows, …).",
    "contexts.ask_failed": "Asking the backends which presentation contexts they take failed.",
    "contexts.asked": "A backend was asked which contexts it takes before a client was answered.",
    "contexts.not_asked": "A backend could not be asked which contexts it takes.",
    "dicomlb.descriptors": "The file-descriptor limit at start and the headroom it leaves.",
    "dicomlb.reloaded": "A new configuration is in force.",
    "dicomlb.started": "dicomlb is serving (routes, pools, backends).",
    "dicomlb.stopped": "dicomlb has stopped.",
    "dicomlb.stopping": "A stop was asked; connections get `graceful_timeout` to finish.",
    "dimse.refused": "A DIMSE request was refused with a status (no route, no backend, "
    "unsupported command, …).",
    "echo.failed": "A C-ECHO could not be relayed to any backend.",
    "echo.relayed": "A C-ECHO was answered by a backend.",
    "find.backend_failed": "One backend of a C-FIND failed (the others' results still count).",
    "find.cancelled": "The client cancelled a C-FIND.",
    "find.failed": "A C-FIND was refused.",
    "find.relayed": "A C-FIND finished (mode, level, results, duplicates, failed backends).",
    "get.failed": "A C-GET was refused.",
    "get.relayed": "A C-GET finished (backends, sub-operations completed / failed / warning).",
    "get.suboperation": "One instance of a C-GET relayed to the client.",
    "get.unexpected_response": "A client sent a response dicomlb was not waiting for during a "
    "C-GET.",
    "health.failed": "An active health check failed (`backend.down` follows after `fall`).",
    "health.recent": "A health check was skipped: recent traffic proved the backend healthy.",
    "health.skipped": "A health check was skipped: the backend is busy at its limit.",
    "http.aborted": "An HTTP exchange was cut short (idle timeout, peer gone).",
    "http.closed": "An HTTP client connection was closed by dicomlb.",
    "http.failed": "An HTTP request could not be relayed; the client got an error status.",
    "http.located": "An Orthanc job or query this instance had not seen was found by asking the "
    "pool's backends (`GET /jobs/{id}`, `GET /queries/{id}`); the one answering 200 owns it "
    "and later requests for it go there.",
    "http.not_located": "No backend answered 200 for an Orthanc job or query this instance "
    "had not seen, within the pool's connect timeout: the request goes to the pool's pick.",
    "http.learned": "Which backend holds a resource was learned from a response (affinity).",
    "http.refused": "An HTTP client or request was refused (too many connections, bad request).",
    "http.request": "One HTTP request answered: the HTTP access log line.",
    "http.retry": "An HTTP request was retried on another backend.",
    "listener.refused": "A listener refused a connection at one of its limits.",
    "listener.started": "A listener is bound and accepting.",
    "listener.stopped": "A listener stopped accepting.",
    "listener.tls_failed": "A TLS handshake with a client failed.",
    "move.destination_associated": "An association to a C-MOVE destination was opened.",
    "move.failed": "A C-MOVE was refused.",
    "move.relayed": "A C-MOVE finished (backends, sub-operations completed / failed / warning).",
    "move.suboperation": "One instance of a C-MOVE relayed via the balancer.",
    "retrieve.backend_failed": "One backend of a retrieve failed.",
    "retrieve.probe_failed": "Asking a backend whether it holds a study failed.",
    "retrieve.probed": "The backends were asked which of them hold what a retrieve asks for.",
    "scp.stored": "The embedded storage SCP (demo, tests) stored a file.",
    "spool.accepting": "The spool takes new instances again.",
    "spool.breaker_open": "The spool's circuit breaker toward a backend opened; delivery "
    "pauses for `retry_in`.",
    "spool.change_skipped": "An operator's change to a spooled item no longer applied (the "
    "item moved on).",
    "spool.commit_failed": "A group commit to the spool failed; the instances were refused.",
    "spool.failover": "Spooled items of a study moved to another backend of the pool.",
    "spool.full": "The spool refuses new instances (a limit or low disk).",
    "spool.orphan_removed": "A file in the spool directory with no index row was removed.",
    "spool.reindexed": "A spooled file missing from the index was indexed again at start.",
    "spool.requeue_failed": "Items could not be queued again (the index refused writes).",
    "spool.started": "The spool is open (what recovery found).",
    "spool.stop_unsaved": "The spool stopped with index updates not written.",
    "spool.stopped": "The spool is closed.",
    "spool.task_failed": "A spool task failed and will be restarted.",
    "spool.update_failed": "An update of the spool index failed.",
    "store.dead": "A spooled instance was given up on (a dead letter).",
    "store.delivered": "A backend stored the instance (`via=spool` when from the spool).",
    "store.failed": "An instance was not stored: refused, or a delivery attempt failed "
    "(`via=spool`: retried in `retry_in`).",
    "store.received": "A C-STORE request arrived.",
    "store.routed": "A C-STORE was given a route, pool and backend.",
    "store.spooled": "An instance is durable in the spool (`mirror=true` for copies).",
    "studies.loaded": "The study placement file was read at start.",
    "studies.write_failed": "The study placement file could not be written.",
    "supervisor.reloading": "The supervisor got SIGHUP and passed it on to every running worker "
    "(each logs its own `admin.reload`).",
    "supervisor.started": "`dicomlb run` with `workers` above 1 is starting its worker processes "
    "(it holds no listener itself).",
    "supervisor.stopped": "Every worker has ended; `code` is the supervisor's exit status, the "
    "worst of the workers' last ones (128 + N for a signal).",
    "supervisor.stopping": "The supervisor got SIGINT / SIGTERM: every worker gets SIGTERM and "
    "drains within `graceful_timeout`.",
    "upstream.associated": "An upstream association to a backend was opened.",
    "upstream.capacity": "A backend takes fewer associations than configured; the limit "
    "learned is used.",
    "upstream.protocol_error": "A backend broke the upper-layer protocol; it was aborted.",
    "upstream.unexpected_command": "A backend sent a command dicomlb was not waiting for.",
    "upstream.unexpected_request": "A backend sent a request on an upstream association.",
    "worker.exited": "A worker process ended (`code`: its exit status, or the signal that "
    "ended it). At ERROR it ended on its own and is started again after `restart_in` (the "
    "backoff doubles per failure in a row, from 0.5 s to 30 s, and starts over after a "
    "minute's run); at INFO it ended because the supervisor stops.",
    "worker.killed": "A stopping worker had not ended `graceful_timeout` + 10 s after SIGTERM and "
    "was sent SIGKILL.",
    "worker.started": "The supervisor started worker K of N (`worker=K/N`, its `pid`).",
}

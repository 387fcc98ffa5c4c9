"""`dicomlb check`: a readable summary of a built snapshot, one part per line."""

from __future__ import annotations

from dicomlb.config.dicom import uid_name
from dicomlb.config.tools import format_duration, host_port
from dicomlb.dicom.tags import tag_name
from dicomlb.snapshot import (
    Ack,
    HttpListenerConfig,
    HttpRouteConfig,
    MoveDestination,
    QueryMode,
    Snapshot,
    StorageCommitment,
    UpstreamMode,
)
from dicomlb.workers import worker_directory

__all__ = ["describe"]


def describe(snapshot: Snapshot) -> str:
    """A readable multi-line summary of a snapshot, for `dicomlb check`."""
    lines = [f"config: {snapshot.source}"]
    if snapshot.workers > 1:
        lines.append(
            f"workers: {snapshot.workers} processes, each one instance sharing the DICOM and "
            "HTTP ports (SO_REUSEPORT)"
        )
    d = snapshot.dicom
    if d is None:
        lines.append("dicom listener: none")
    else:
        per_aet = d.max_associations_per_calling_aet or "no limit"
        per_ip = d.max_associations_per_ip or "no limit"
        allow = (
            ", ".join(
                " from ".join(str(part) for part in (rule.aet, rule.network) if part is not None)
                for rule in d.allow
            )
            if d.allow
            else "any calling AE title from any address"
        )
        echo = f"pool {d.echo_pool.name}" if d.echo_pool else "answered by dicomlb"
        listed = [
            f"{uid_name(u)} ({d.encodings[u].value})" if u in d.encodings else uid_name(u)
            for u in d.transfer_syntaxes
        ]
        declared = [f"{uid_name(u)} ({e.value})" for u, e in d.encodings.items()]
        syntaxes = (
            ", ".join(["any (other UIDs than the standard ones as encapsulated)", *declared])
            if d.any_transfer_syntax
            else ", ".join(listed)
        )
        lines += [
            f"dicom listener: {d.ae_title} on {host_port(d.host, d.port)}",
            f"  called AE title checked: {'yes' if d.check_called_aet else 'no'}; "
            f"max associations {d.max_associations} (per calling AE: {per_aet}); "
            f"max PDU {_pdu(d.max_pdu)}",
            f"  allowed: {allow}; associations per address: {per_ip}; negotiating at once: "
            f"{d.max_negotiating} (per address: {d.max_negotiating_per_ip})",
            f"  timeouts: ARTIM {format_duration(d.artim_timeout)}, "
            f"idle {format_duration(d.idle_timeout)}; C-ECHO: {echo}",
            f"  transfer syntaxes: {syntaxes}",
        ]
    lines.append("routes (first match wins):")
    if not snapshot.routes:
        lines.append("  none")
    for n, route in enumerate(snapshot.routes, 1):
        mirror = f"; mirror to {', '.join(p.name for p in route.mirror)}" if route.mirror else ""
        spooled = f" (ack: spool{mirror})" if route.ack is Ack.SPOOL else ""
        lines.append(
            f"  {n}. {route.name}: {route.match_text or 'everything'} -> pool {route.pool.name}"
            f"{spooled}"
        )
    workers = snapshot.workers
    part = "worker" if workers > 1 else "instance"
    lines.append("pools:")
    for pool in snapshot.pools.values():
        strategy = pool.strategy.value
        if pool.key is not None:
            strategy += f" on {pool.key_name} {_tag_number(pool.key)}"
        h = pool.health
        health = (
            f"every {format_duration(h.interval)}, timeout {format_duration(h.timeout)}, "
            f"fall {h.fall}, rise {h.rise}"
            if h.enabled
            else f"off (passive: fall {h.fall}, back after {format_duration(h.fail_timeout)})"
        )
        lines += [
            f"  {pool.name}: {strategy}; health: {health}",
            f"    called AE title: {pool.called_aet.value}; timeouts: connect "
            f"{format_duration(pool.connect_timeout)}, acquire "
            f"{format_duration(pool.acquire_timeout)}, response "
            f"{format_duration(pool.response_timeout)}, idle {format_duration(pool.idle_timeout)}",
        ]
        if pool.instances > 1:
            http_cap = pool.http.max_connections if pool.http is not None else None
            who = (
                f"{pool.instances} processes ({pool.instances // workers} instance(s) x "
                f"{workers} workers)"
                if workers > 1
                else f"{pool.instances} instances"
            )
            lines.append(
                f"    shared by {who}: the limits below are this {part}'s part"
                + (f"; http max connections {http_cap} per backend" if http_cap else "")
            )
        if pool.upstream is UpstreamMode.PER_CLIENT:
            lines.append("    upstream associations: one per client association, none kept idle")
        if (pool.query, pool.move_destination, pool.storage_commitment) != (
            QueryMode.ONE,
            MoveDestination.PASSTHROUGH,
            StorageCommitment.REFUSE,
        ):
            lines.append(
                f"    query: {pool.query.value} (per backend "
                f"{format_duration(pool.query_timeout)}); C-MOVE destination: "
                f"{pool.move_destination.value}; storage commitment: "
                f"{pool.storage_commitment.value}"
            )
        per = f" per {part}" if pool.instances > 1 else ""
        for b in pool.backends:
            addresses = [str(b.http)] if b.http else []
            if b.dicom is not None:
                addresses.insert(0, f"{b.dicom.ae_title}@{host_port(b.dicom.host, b.dicom.port)}")
            if b.store is not None:  # the DICOM -> HTTP bridge
                login = f", auth {b.store.auth_text}" if b.store.auth_text else ""
                batch = f", batch {b.store.stow_batch}" if b.store.stow_batch > 1 else ""
                addresses.append(f"(C-STORE via {b.store.via.value}{login}{batch})")
            address = " ".join(addresses)
            lines.append(
                f"    - {b.name}: {address}  weight {b.weight}, max associations "
                f"{b.max_associations}{per}, max PDU {_pdu(b.max_pdu)}"
            )
    tags = ", ".join(f"{tag_name(t)} {_tag_number(t)}" for t in sorted(snapshot.wanted_tags))
    lines.append(f"routing tags: {tags or 'none'}")
    lines += _http(snapshot.http, snapshot.http_routes)
    lines.append(f"graceful timeout: {format_duration(snapshot.graceful_timeout)}")
    a = snapshot.admin
    if a is None:
        lines.append("admin listener: none")
    else:
        auth = []
        if a.auth.bearer_tokens_sha256:
            auth.append(f"{len(a.auth.bearer_tokens_sha256)} bearer token(s)")
        if a.auth.basic:
            auth.append(f"basic for {', '.join(sorted(a.auth.basic))}")
        lines.append(
            f"admin listener: http://{host_port(a.host, a.port)}/ "
            f"(auth: {'; '.join(auth) if auth else 'none, loopback only'})"
        )
        if workers > 1:
            lines.append(
                f"  one per worker: worker K on port {a.port} + K ({a.port}-{a.port + workers - 1})"
            )
    lines.append(f"reload on file change: {'yes' if snapshot.watch else 'no'}")
    sp = snapshot.spool
    if sp is not None:
        r = sp.retry
        failover = (
            f"fail over after {format_duration(sp.failover_after)}"
            if sp.failover_after is not None
            else "wait for the study's backend"
        )
        lines += [
            f"spool: {sp.directory}"
            + (f" (worker K in {worker_directory(sp.directory, 0)[:-1]}K)" if workers > 1 else ""),
            f"  limits: max bytes {sp.max_bytes or 'none'}, max items {sp.max_items or 'none'}, "
            f"min free disk {sp.min_free_disk}",
            f"  retry: base {format_duration(r.base)}, cap {format_duration(r.cap)}, "
            f"max attempts {r.max_attempts or 'no limit'}, max age "
            f"{format_duration(r.max_age) if r.max_age else 'no limit'}; {failover}; "
            "delivered files: "
            + (f"kept {format_duration(sp.keep_delivered)}" if sp.keep_delivered else "removed"),
        ]
    if snapshot.dicom_nodes:
        nodes = ", ".join(f"{aet} -> {address}" for aet, address in snapshot.dicom_nodes.items())
        lines.append(f"dicom nodes (C-MOVE destinations): {nodes}")
    if snapshot.state_dir is not None:
        lines.append(
            f"state directory: {snapshot.state_dir}"
            + (
                f" (worker K in {worker_directory(snapshot.state_dir, 0)[:-1]}K)"
                if workers > 1
                else ""
            )
        )
    docker = snapshot.providers.docker
    if docker is not None:
        opt = (
            "every container with dicomlb.pool, unless dicomlb.enable=false"
            if docker.exposed_by_default
            else "containers labelled dicomlb.enable=true"
        )
        lines.append(f"docker provider: {docker.endpoint} ({opt})")
    return "\n".join(lines)


def _http(listener: HttpListenerConfig | None, routes: tuple[HttpRouteConfig, ...]) -> list[str]:
    """The HTTP listener and routes' lines."""
    if listener is None:
        return []  # no HTTP side: `dicomlb check` reads as before
    tls = listener.tls
    https = "" if tls is None else "; TLS" + (" (client certificates required)" if tls.ca else "")
    lines = [
        f"http listener: {listener.host}:{listener.port}{https}; max connections "
        f"{listener.max_connections}, max head {listener.max_head_size} bytes",
        f"  timeouts: head {format_duration(listener.head_timeout)}, keep-alive "
        f"{format_duration(listener.keepalive_timeout)}, idle "
        f"{format_duration(listener.idle_timeout)}",
        "http routes (first match wins):",
    ]
    for n, route in enumerate(routes, 1):
        mws = f" via {', '.join(m.name for m in route.middlewares)}" if route.middlewares else ""
        writer = route.pool.orthanc_writer
        writes = f" (writes to {writer})" if writer else ""
        lines.append(
            f"  {n}. {route.name}: {route.match_text} -> pool {route.pool.name}{writes}{mws}"
        )
    return lines


def _pdu(size: int) -> str:
    return "unlimited" if size == 0 else str(size)


def _tag_number(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"

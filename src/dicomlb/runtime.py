"""A snapshot built into running parts: router, pools and backends' upstream pools.

Associations keep the Runtime they started with, so a reload swaps a new one in for new
associations while those in flight finish on the old one. Backend state and upstream pools
are shared across runtimes for backends that stay.
"""

from __future__ import annotations

from collections.abc import Mapping

from dicomlb.dicom.contexts import SyntaxPair, Verdict, combine
from dicomlb.dicom.negotiation import Knowledge, Service, is_supported_abstract_syntax
from dicomlb.dicom.pdu import AssociateRequest
from dicomlb.dicom.qr import CommitmentRegistry, MoveRegistry
from dicomlb.dicom.uids import VERIFICATION
from dicomlb.dicom.upstream import Ask, Dial, UpstreamKey, UpstreamPool, dial_tcp
from dicomlb.http.lease import resize
from dicomlb.metrics import Metrics
from dicomlb.pools import BackendState, Pool
from dicomlb.routing import Router
from dicomlb.snapshot import (
    CalledAet,
    DicomListenerConfig,
    MessageFacts,
    Snapshot,
    StorageCommitment,
)
from dicomlb.studies import StudyIndex


class Runtime:
    """Everything a relay needs to place a message, for one snapshot."""

    def __init__(
        self,
        snapshot: Snapshot,
        previous_backends: Mapping[str, BackendState] | None = None,
        previous_upstreams: Mapping[str, UpstreamPool] | None = None,
        metrics: Metrics | None = None,
        *,
        studies: StudyIndex | None = None,
        moves: MoveRegistry | None = None,
        commitments: CommitmentRegistry | None = None,
        dial: Dial = dial_tcp,
        joining: frozenset[str] = frozenset(),
    ) -> None:
        """`joining`: backends that, when new here, take work only once a check passed."""
        self.snapshot = snapshot
        # How connections to backends, C-MOVE destinations and commitment requesters are
        # opened (the unit tests' in-memory network instead of TCP).
        self.dial = dial
        self.metrics = metrics if metrics is not None else Metrics()  # shared by the App's runtimes
        # Kept across reloads (App passes them on): where studies are, moves in flight.
        self.studies = studies if studies is not None else StudyIndex()
        self.moves = moves if moves is not None else MoveRegistry()
        # Storage commitment transactions awaiting their backend's N-EVENT-REPORT.
        self.commitments = commitments if commitments is not None else CommitmentRegistry()
        services = {Service.QUERY_RETRIEVE}
        if any(p.storage_commitment is StorageCommitment.FORWARD for p in snapshot.pools.values()):
            services.add(Service.STORAGE_COMMITMENT)
        self.services = frozenset(services)
        self.router = Router(snapshot.routes)
        self.backends: dict[str, BackendState] = {}
        self.upstreams: dict[str, UpstreamPool] = {}
        self.pools: dict[str, Pool] = {}
        old_backends = previous_backends or {}
        old_upstreams = previous_upstreams or {}
        for pool_config in snapshot.pools.values():
            members = []
            for backend_config in pool_config.backends:
                state = old_backends.get(backend_config.name)
                if state is None or state.config != backend_config:
                    previous = state
                    state = BackendState(
                        backend_config,
                        pool_config.health,
                        joining=backend_config.name in joining and previous is None,
                    )
                    if previous is not None:  # a changed backend keeps what the operator set
                        state.enabled, state.mode = previous.enabled, previous.mode
                        state.budget = previous.budget
                options = pool_config.http
                resize(state.budget, options.max_connections if options is not None else None)
                self.backends[state.name] = state
                upstream = old_upstreams.get(state.name)
                if upstream is None or upstream.backend is not state:
                    upstream = UpstreamPool(state, pool_config, dial)
                else:  # kept with its associations; the pool's settings may have changed
                    upstream.pool = pool_config
                    upstream.learned.clear()  # and so may the backend: learn it anew
                self.upstreams[state.name] = upstream
                members.append(state)
            self.pools[pool_config.name] = Pool(pool_config, members)

    def contexts_to_ask(
        self, request: AssociateRequest, peer_ip: str, listener: DicomListenerConfig
    ) -> list[Ask]:
        """When the association's AE titles and address decide its pool, the available
        backends of that pool that have not said about some of the client's contexts: asked
        before the client is answered, so that even its first association is answered as
        they would. Empty when several pools could serve it (what was learned decides)."""
        facts = MessageFacts(
            calling_aet=request.calling_ae,
            called_aet=request.called_ae,
            peer_ip=peer_ip,
            command="",
            sop_class_uid="",
        )
        pools = {route.pool.name: route.pool for route in self.router.candidates(facts)}
        if len(pools) != 1:
            return []
        (pool,) = pools.values()
        pairs = tuple(
            dict.fromkeys(
                (proposal.abstract_syntax, ts)
                for proposal in request.contexts
                if proposal.abstract_syntax != VERIFICATION
                and is_supported_abstract_syntax(proposal.abstract_syntax, self.services)
                for ts in proposal.transfer_syntaxes
                if listener.encoding(ts) is not None
            )
        )
        asks = []
        for backend in pool.backends:
            if backend.dicom is None or backend.store is not None:
                continue
            if not self.backends[backend.name].available:
                continue
            upstream = self.upstreams[backend.name]
            called = (
                request.called_ae
                if pool.called_aet is CalledAet.PASSTHROUGH
                else backend.dicom.ae_title
            )
            key = (request.calling_ae, called, request.user_info.raw_items)
            if upstream.unknown(key, pairs):
                asks.append(
                    Ask(upstream=upstream, key=key, pairs=pairs, timeout=pool.connect_timeout)
                )
        return asks

    def known_contexts(self, calling_ae: str, called_ae: str, peer_ip: str) -> Knowledge:
        """What the backends that could serve an association said about a context: those
        of the pools of every route its AE titles and address do not rule out."""
        facts = MessageFacts(
            calling_aet=calling_ae,
            called_aet=called_ae,
            peer_ip=peer_ip,
            command="",
            sop_class_uid="",
        )
        asked: list[tuple[UpstreamPool, UpstreamKey] | None] = []  # None: cannot be known
        for route in self.router.candidates(facts):
            for backend in route.pool.backends:
                if backend.store is not None:  # the DICOM -> HTTP bridge takes any context
                    asked.append(None)
                elif backend.dicom is not None:
                    passthrough = route.pool.called_aet is CalledAet.PASSTHROUGH
                    called = called_ae if passthrough else backend.dicom.ae_title
                    asked.append((self.upstreams[backend.name], (calling_ae, called, ())))

        def known(pair: SyntaxPair) -> Verdict:
            return combine(
                Verdict.UNKNOWN if entry is None else entry[0].verdict(entry[1], pair)
                for entry in asked
            )

        return known

    def pools_in_use(self) -> list[Pool]:
        """Pools a route (DICOM or HTTP) or the C-ECHO option sends to."""
        names = {route.pool.name for route in self.snapshot.routes}
        names |= {route.pool.name for route in self.snapshot.http_routes}
        dicom = self.snapshot.dicom
        if dicom is not None and dicom.echo_pool is not None:
            names.add(dicom.echo_pool.name)
        return [pool for name, pool in self.pools.items() if name in names]

"""A snapshot built into running parts: router, pools and backends' upstream pools.

Associations keep the Runtime they started with, so a reload swaps a new one in for new
associations while those in flight finish on the old one. Backend state and upstream pools
are shared across runtimes for backends that stay.
"""

from __future__ import annotations

from collections.abc import Mapping

from dicomlb.dicom.negotiation import Service
from dicomlb.dicom.qr import CommitmentRegistry, MoveRegistry
from dicomlb.dicom.upstream import UpstreamPool
from dicomlb.metrics import Metrics
from dicomlb.pools import BackendState, Pool
from dicomlb.routing import Router
from dicomlb.snapshot import Snapshot, StorageCommitment
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
    ) -> None:
        self.snapshot = snapshot
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
                    state = BackendState(backend_config, pool_config.health)
                    if previous is not None:  # a changed backend keeps what the operator set
                        state.enabled, state.mode = previous.enabled, previous.mode
                self.backends[state.name] = state
                upstream = old_upstreams.get(state.name)
                if upstream is None or upstream.backend is not state:
                    upstream = UpstreamPool(state, pool_config)
                else:  # kept with its associations; the pool's settings may have changed
                    upstream.pool = pool_config
                self.upstreams[state.name] = upstream
                members.append(state)
            self.pools[pool_config.name] = Pool(pool_config, members)

    def pools_in_use(self) -> list[Pool]:
        """Pools a route (DICOM or HTTP) or the C-ECHO option sends to."""
        names = {route.pool.name for route in self.snapshot.routes}
        names |= {route.pool.name for route in self.snapshot.http_routes}
        dicom = self.snapshot.dicom
        if dicom is not None and dicom.echo_pool is not None:
            names.add(dicom.echo_pool.name)
        return [pool for name, pool in self.pools.items() if name in names]

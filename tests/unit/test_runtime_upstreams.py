"""A reload keeps an unchanged backend's upstream pool (its associations and learned
capacity) and gives it the pool's new settings (`upstream`, timeouts), but forgets the
presentation contexts it learned; what the candidate backends said, and whom to ask."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from dicomlb.config import build_snapshot
from dicomlb.dicom.contexts import Verdict
from dicomlb.dicom.pdu import ContextResult
from dicomlb.runtime import Runtime
from dicomlb.snapshot import DicomListenerConfig, UpstreamMode
from tests.unit.helpers import IMPLICIT_VR_LE, VERIFICATION, make_request


def config(**pool: Any) -> dict[str, Any]:
    return {
        "pools": {"p": {"backends": [{"name": "scp", "dicom": "SCP@127.0.0.1:104"}], **pool}},
        "routes": [{"name": "all", "pool": "p"}],
    }


def test_a_reload_keeps_the_upstream_pool_with_the_new_settings() -> None:
    old = Runtime(build_snapshot(config()))
    assert not old.upstreams["scp"].per_client
    new_snapshot = build_snapshot(config(upstream="per_client", connect_timeout="2s"))
    new = Runtime(new_snapshot, old.backends, old.upstreams)
    upstream = new.upstreams["scp"]
    assert upstream is old.upstreams["scp"]
    assert upstream.per_client
    assert upstream.pool.upstream is UpstreamMode.PER_CLIENT
    assert upstream.pool.connect_timeout == 2.0


MR = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT = "1.2.840.10008.1.2.1"
REFUSED = [((MR, EXPLICIT), ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED)]


def two_pools() -> dict[str, Any]:
    return {
        "pools": {
            "ct": {"backends": [{"name": "ctonly", "dicom": "CTONLY@127.0.0.1:104"}]},
            "any": {
                "called_aet": "passthrough",
                "backends": [{"name": "all", "dicom": "ALL@127.0.0.1:105"}],
            },
        },
        "routes": [
            {"name": "ct-room", "match": {"calling_aet": "CT_ROOM"}, "pool": "ct"},
            {"name": "mr", "match": {"Modality": "MR"}, "pool": "any"},
            {"name": "rest", "pool": "ct"},
        ],
    }


def test_known_contexts_combine_the_candidate_backends() -> None:
    runtime = Runtime(build_snapshot(two_pools()))
    runtime.upstreams["ctonly"].learned.learn(("CTONLY", "CT_ROOM"), REFUSED, 0)
    runtime.upstreams["ctonly"].learned.learn(("CTONLY", "WS"), REFUSED, 0)
    # CT_ROOM: its AE title decides the route; ctonly refused MR (result 3) in this syntax
    known = runtime.known_contexts("CT_ROOM", "DICOMLB", "10.0.0.1")
    assert known((MR, EXPLICIT)) is Verdict.REFUSED_AS_ABSTRACT
    # WS: the mr route may be taken too, and ALL (called as DICOMLB: passthrough) said nothing
    assert runtime.known_contexts("WS", "DICOMLB", "10.0.0.1")((MR, EXPLICIT)) is Verdict.UNKNOWN
    runtime.upstreams["all"].learned.learn(("DICOMLB", "WS"), REFUSED, 0)
    assert runtime.known_contexts("WS", "DICOMLB", "10.0.0.1")((MR, EXPLICIT)) is (
        Verdict.REFUSED_AS_ABSTRACT
    )
    # a reload forgets
    reloaded = Runtime(build_snapshot(two_pools()), runtime.backends, runtime.upstreams)
    known = reloaded.known_contexts("CT_ROOM", "DICOMLB", "10.0.0.1")
    assert known((MR, EXPLICIT)) is Verdict.UNKNOWN


def test_backends_are_asked_only_when_the_association_decides_the_pool() -> None:
    runtime = Runtime(build_snapshot(two_pools()))
    listener = DicomListenerConfig()
    request = make_request(
        contexts=[(1, MR, (EXPLICIT, "1.2.x")), (3, VERIFICATION, (IMPLICIT_VR_LE,))]
    )
    decided = replace(request, calling_ae="CT_ROOM")
    (ask,) = runtime.contexts_to_ask(decided, "10.0.0.1", listener)
    assert ask.upstream is runtime.upstreams["ctonly"]
    assert ask.key[:2] == ("CT_ROOM", "CTONLY")
    assert ask.pairs == ((MR, EXPLICIT),)  # not verification, not what is no UID
    runtime.upstreams["ctonly"].learned.learn(("CTONLY", "CT_ROOM"), REFUSED, 0)
    assert runtime.contexts_to_ask(decided, "10.0.0.1", listener) == []  # known now
    assert runtime.contexts_to_ask(replace(request, calling_ae="WS"), "10.0.0.1", listener) == []

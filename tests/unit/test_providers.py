"""Providers without I/O: container labels → a backend or an error naming the label, the
merge of the file's, the API's and Docker's backends with conflicts, the API's state file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dicomlb import install
from dicomlb.config import build_backend, build_snapshot
from dicomlb.pools import BackendState
from dicomlb.providers import api
from dicomlb.providers.docker import client_url, events_since
from dicomlb.providers.labels import Container, container_of, definition, stop_signalled
from dicomlb.providers.merge import Definition, ItemStatus, Provider, merge
from dicomlb.snapshot import DockerProviderConfig, HealthConfig

OPT_IN = DockerProviderConfig()
BY_DEFAULT = DockerProviderConfig(exposed_by_default=True)
WORKER = {
    "dicomlb.enable": "true",
    "dicomlb.pool": "workers",
    "dicomlb.dicom.port": "4242",
    "dicomlb.dicom.aet": "ORTHANC",
}


def container(labels: dict[str, str], **facts: Any) -> Container:
    facts.setdefault("networks", {"net": "172.18.0.5"})
    return Container(id="0123456789abcdef", name="app-worker-1", labels=labels, **facts)


# (case, labels, container facts, settings, the backend as a mapping or None)
BACKENDS: list[tuple[str, dict[str, str], dict[str, Any], DockerProviderConfig, Any]] = [
    (
        "dicom",
        WORKER,
        {},
        OPT_IN,
        {"name": "app-worker-1", "dicom": "ORTHANC@172.18.0.5:4242"},
    ),
    (
        "every label",
        {
            **WORKER,
            "dicomlb.name": "w1",
            "dicomlb.http.port": "8042",
            "dicomlb.weight": "2",
            "dicomlb.max_associations": "8",
            "dicomlb.max_pdu": "32768",
            "dicomlb.store_via": "orthanc_rest",
        },
        {},
        OPT_IN,
        {
            "name": "w1",
            "dicom": "ORTHANC@172.18.0.5:4242",
            "http": "http://172.18.0.5:8042",
            "weight": 2,
            "max_associations": 8,
            "max_pdu": 32768,
            "store_via": "orthanc_rest",
        },
    ),
    (
        "host network",
        WORKER,
        {"host_network": True, "networks": {"host": ""}},
        DockerProviderConfig(host_address="10.1.2.3"),
        {"name": "app-worker-1", "dicom": "ORTHANC@10.1.2.3:4242"},
    ),
    (
        "network chosen by the provider",
        WORKER,
        {"networks": {"front": "10.0.0.2", "back": "10.0.1.2"}},
        DockerProviderConfig(network="back"),
        {"name": "app-worker-1", "dicom": "ORTHANC@10.0.1.2:4242"},
    ),
    (
        "network chosen by the label",
        {**WORKER, "dicomlb.network": "front"},
        {"networks": {"front": "10.0.0.2", "back": "10.0.1.2"}},
        DockerProviderConfig(network="back"),
        {"name": "app-worker-1", "dicom": "ORTHANC@10.0.0.2:4242"},
    ),
    (
        "http only",
        {"dicomlb.enable": "true", "dicomlb.pool": "web", "dicomlb.http.port": "80"},
        {},
        OPT_IN,
        {"name": "app-worker-1", "http": "http://172.18.0.5:80"},
    ),
    (
        "exposed by default",
        {k: v for k, v in WORKER.items() if k != "dicomlb.enable"},
        {},
        BY_DEFAULT,
        {"name": "app-worker-1", "dicom": "ORTHANC@172.18.0.5:4242"},
    ),
    ("not opted in", {k: v for k, v in WORKER.items() if k != "dicomlb.enable"}, {}, OPT_IN, None),
    ("opted out", {**WORKER, "dicomlb.enable": "false"}, {}, BY_DEFAULT, None),
    ("no dicomlb labels", {"com.example": "x"}, {}, BY_DEFAULT, None),
    ("stopped", WORKER, {"running": False}, OPT_IN, None),
    ("being stopped", WORKER, {"stopping": True}, OPT_IN, None),
    ("unhealthy", WORKER, {"health": "unhealthy"}, OPT_IN, None),
    ("health check starting", WORKER, {"health": "starting"}, OPT_IN, None),
]


@pytest.mark.parametrize(
    ("labels", "facts", "settings", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in BACKENDS],
)
def test_labels_make_a_backend(
    labels: dict[str, str], facts: dict[str, Any], settings: DockerProviderConfig, expected: Any
) -> None:
    found = definition(container(labels, **facts), settings)
    if expected is None:
        assert found is None
        return
    assert found is not None and found.error is None, found
    assert found.backend == build_backend(expected)
    assert (found.provider, found.pool) == (Provider.DOCKER, labels["dicomlb.pool"])
    assert found.origin == "container app-worker-1 (0123456789ab)"


# (case, labels, container facts, the error after "container app-worker-1 (0123456789ab): ")
ERRORS: list[tuple[str, dict[str, str], dict[str, Any], str]] = [
    ("typo", {**WORKER, "dicomlb.dicom.prot": "1"}, {}, "dicomlb.dicom.prot: unknown label"),
    ("no pool", {**WORKER, "dicomlb.pool": ""}, {}, "dicomlb.pool: missing"),
    ("port not a number", {**WORKER, "dicomlb.dicom.port": "42a"}, {}, "dicomlb.dicom.port: "),
    ("port too big", {**WORKER, "dicomlb.dicom.port": "70000"}, {}, "dicomlb.dicom.port: 70000"),
    (
        "no AE title",
        {k: v for k, v in WORKER.items() if k != "dicomlb.dicom.aet"},
        {},
        "dicomlb.dicom.aet: missing",
    ),
    ("AE title too long", {**WORKER, "dicomlb.dicom.aet": "A" * 17}, {}, "dicomlb.dicom.aet: "),
    ("weight zero", {**WORKER, "dicomlb.weight": "0"}, {}, "dicomlb.weight: "),
    ("bad store_via", {**WORKER, "dicomlb.store_via": "ftp"}, {}, "dicomlb.store_via: "),
    ("bad enable", {**WORKER, "dicomlb.enable": "maybe"}, {}, "dicomlb.enable: "),
    ("bad name", {**WORKER, "dicomlb.name": "-x"}, {}, "dicomlb.name: "),
    (
        "no address",
        {"dicomlb.enable": "true", "dicomlb.pool": "workers"},
        {},
        "dicomlb.dicom.port: the container has no address",
    ),
    (
        "several networks",
        WORKER,
        {"networks": {"a": "10.0.0.2", "b": "10.0.1.2"}},
        "dicomlb.network: the container is on several networks (a, b)",
    ),
    (
        "not on the labelled network",
        {**WORKER, "dicomlb.network": "c"},
        {"networks": {"a": "10.0.0.2"}},
        'dicomlb.network: the container is not on network "c"',
    ),
]


@pytest.mark.parametrize(
    ("labels", "facts", "error"), [pytest.param(*case[1:], id=case[0]) for case in ERRORS]
)
def test_a_bad_label_is_an_error_naming_the_container_and_the_label(
    labels: dict[str, str], facts: dict[str, Any], error: str
) -> None:
    found = definition(container(labels, **facts), OPT_IN)
    assert found is not None and found.backend is None
    assert found.error is not None
    assert found.error.startswith(f"container app-worker-1 (0123456789ab): {error}"), found.error


def test_an_inspect_document_gives_the_container() -> None:
    document = {
        "Id": "abc",
        "Name": "/w-1",
        "Config": {"Labels": WORKER},
        "State": {"Running": True, "Paused": False, "Health": {"Status": "healthy"}},
        "HostConfig": {"NetworkMode": "host"},
        "NetworkSettings": {"Networks": {"host": {"IPAddress": ""}}},
    }
    found = container_of(document, stopping=True)
    assert (found.name, found.running, found.health, found.host_network) == (
        "w-1",
        True,
        "healthy",
        True,
    )
    assert found.stopping and found.labels == WORKER
    paused = container_of({**document, "State": {"Running": True, "Paused": True}})
    assert not paused.running and paused.health is None


def test_a_stop_signal_is_seen_in_the_kill_event() -> None:
    def kill(signal: str) -> dict[str, Any]:
        return {"Action": "kill", "Actor": {"ID": "x", "Attributes": {"signal": signal}}}

    assert stop_signalled(kill("15")) and stop_signalled(kill("9"))
    assert not stop_signalled(kill("1"))  # SIGHUP: a reload, not a stop
    assert not stop_signalled({"Action": "die", "Actor": {"Attributes": {"signal": "15"}}})


# ---------------------------------------------------------------- merge


def file_config() -> dict[str, Any]:
    return {
        "pools": {
            "workers": {"backends": [{"name": "a", "dicom": "A@10.0.0.1:104"}]},
            "web": {},
        },
        "routes": [{"name": "all", "pool": "workers"}],
        "http_routes": [{"name": "web", "pool": "web"}],
    }


def defined(provider: Provider, name: str, pool: str = "workers", **backend: Any) -> Definition:
    backend.setdefault("dicom", f"{name.upper()[:16]}@10.0.9.9:104")
    return Definition(
        provider=provider,
        name=name,
        pool=pool,
        origin=f"{provider} {name}",
        backend=build_backend({"name": name, **backend}),
    )


def fates(items: Any) -> set[tuple[str, str, str]]:
    return {(i.name, i.provider.value, i.status.value) for i in items}


def test_providers_add_backends_to_the_files_pools() -> None:
    file = build_snapshot(file_config())
    merged = merge(
        file,
        [
            defined(Provider.API, "b"),
            defined(Provider.DOCKER, "c"),
            defined(Provider.DOCKER, "w", pool="web", dicom=None, http="http://10.0.0.8:80"),
        ],
    )
    pools = merged.snapshot.pools
    assert [b.name for b in pools["workers"].backends] == ["a", "b", "c"]
    assert [b.name for b in pools["web"].backends] == ["w"]
    assert merged.snapshot.routes[0].pool is pools["workers"]
    assert merged.snapshot.http_routes[0].pool is pools["web"]
    assert not merged.failed
    assert merged.provider_of("c") is Provider.DOCKER and merged.provider_of("a") is Provider.FILE
    assert [b.name for b in file.pools["workers"].backends] == ["a"]  # the file's untouched


@pytest.mark.parametrize(
    ("given", "served", "failed"),
    [
        pytest.param(
            [defined(Provider.DOCKER, "a")],
            {("a", "file")},
            {("a", "docker", "conflict")},
            id="docker takes the file's name: the file's is served",
        ),
        pytest.param(
            [defined(Provider.API, "b"), defined(Provider.DOCKER, "b")],
            {("a", "file"), ("b", "api")},
            {("b", "docker", "conflict")},
            id="docker takes the API's name: the API's is served",
        ),
        pytest.param(
            [
                defined(Provider.DOCKER, "d"),
                defined(Provider.DOCKER, "d"),
                defined(Provider.API, "e"),
            ],
            {("a", "file"), ("e", "api")},
            {("d", "docker", "conflict")},
            id="two containers take one name: neither is served, the others are",
        ),
        pytest.param(
            [defined(Provider.DOCKER, "x", pool="nope"), defined(Provider.DOCKER, "y")],
            {("a", "file"), ("y", "docker")},
            {("x", "docker", "error")},
            id="a pool the file does not define",
        ),
        pytest.param(
            [defined(Provider.DOCKER, "h", dicom=None, http="http://10.0.0.8:80")],
            {("a", "file")},
            {("h", "docker", "error")},
            id="no DICOM address in a DICOM pool",
        ),
        pytest.param(
            [
                Definition(
                    provider=Provider.DOCKER, name="z", pool="workers", origin="c", error="bad"
                ),
                defined(Provider.API, "b"),
            ],
            {("a", "file"), ("b", "api")},
            {("z", "docker", "error")},
            id="an error is carried through",
        ),
    ],
)
def test_a_conflict_fails_only_that_item(
    given: list[Definition], served: set[tuple[str, str]], failed: set[tuple[str, str, str]]
) -> None:
    merged = merge(build_snapshot(file_config()), given)
    assert {(n, p) for n, p, s in fates(merged.items) if s == "ok"} == served
    assert fates(merged.failed) == failed
    in_pools = {b.name for pool in merged.snapshot.pools.values() for b in pool.backends}
    assert in_pools == {name for name, _ in served}
    for item in merged.failed:
        assert item.error


def test_the_conflict_names_the_winner() -> None:
    merged = merge(build_snapshot(file_config()), [defined(Provider.DOCKER, "a")])
    (item,) = merged.failed
    assert item.status is ItemStatus.CONFLICT
    assert item.error is not None
    assert 'backend "a" is already defined by file (<config>, pool workers)' in item.error


# ---------------------------------------------------------------- the API's state


def test_api_backends_are_kept_atomically_and_read_back(tmp_path: Path) -> None:
    entries = [
        api.ApiBackend(pool="workers", data={"name": "b", "dicom": "B@10.0.0.2:104"}),
        api.ApiBackend(pool="gone", data={"name": "c", "dicom": "C@10.0.0.3:104"}),
    ]
    assert api.load(str(tmp_path)) == []
    api.save(str(tmp_path), entries)
    assert api.load(str(tmp_path)) == entries
    assert sorted(p.name for p in tmp_path.iterdir()) == [api.STATE_FILE]  # no temporary left
    merged = merge(build_snapshot(file_config()), api.definitions(entries))
    assert fates(merged.items) == {("a", "file", "ok"), ("b", "api", "ok"), ("c", "api", "error")}


def test_an_api_backend_that_no_longer_validates_is_an_error_not_a_failure() -> None:
    found = api.definitions([api.ApiBackend(pool="workers", data={"name": "b", "dicom": "B@h"})])
    assert found[0].error is not None and "pools.workers.backends[+].dicom" in found[0].error


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (b"{", "is not JSON"),
        (b'{"version": 2, "backends": []}', "is not a version 1 list"),
        (b'{"version": 1, "backends": {}}', "backends is not a list"),
        (b'{"version": 1, "backends": [{"pool": 1}]}', "backends[0] is not {pool, backend}"),
    ],
)
def test_a_broken_state_file_is_named(text: bytes, error: str) -> None:
    with pytest.raises(api.ApiStateError, match=r"state\.json") as err:
        api.decode(text, "state.json")
    assert error in str(err.value) and "move it away" in str(err.value)


# ---------------------------------------------------------------- the watcher's small parts


@pytest.mark.parametrize(
    ("system_time", "since"),
    [
        ("2026-12-03T11:27:14.601608773Z", "1796297234.601608773"),
        ("2026-12-03T11:27:14Z", "1796297234.0"),
        ("2026-12-03T12:27:14.5+01:00", "1796297234.5"),
        ("garbage", ""),
        ("", ""),
    ],
)
def test_the_engines_clock_becomes_the_events_since(system_time: str, since: str) -> None:
    assert events_since(system_time) == since


def test_tcp_endpoints_are_http_or_https() -> None:
    assert client_url("tcp://10.0.0.1:2376", tls=True) == "https://10.0.0.1:2376"
    assert client_url("tcp://10.0.0.1:2375", tls=False) == "http://10.0.0.1:2375"
    assert client_url("unix:///run/docker.sock", tls=False) == "unix:///run/docker.sock"


def test_a_joining_backend_takes_work_after_its_first_passed_check() -> None:
    health = HealthConfig(rise=3)
    joining = BackendState(build_backend({"name": "w", "dicom": "W@h:1"}), health, joining=True)
    assert not joining.available
    joining.health.success()
    assert joining.available
    joining.health.eject(now=1.0)
    joining.health.success()
    assert not joining.available  # after that, `rise` applies as to any backend
    unchecked = HealthConfig(enabled=False)
    at_once = BackendState(build_backend({"name": "w", "dicom": "W@h:1"}), unchecked, joining=True)
    assert at_once.available  # nothing would check it: it joins at once


def test_the_providers_section_waits_for_a_restart() -> None:
    with_docker = build_snapshot({**file_config(), "providers": {"docker": {}}})
    applied, waiting = install.pin(build_snapshot(file_config()), with_docker)
    assert waiting == ("providers",)
    assert applied.providers.docker is None

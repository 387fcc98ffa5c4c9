"""config.py: YAML → Snapshot, and the exact text of its errors."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from dicomlb.config import (
    ConfigError,
    build_snapshot,
    describe,
    format_duration,
    load_snapshot,
    parse_duration,
)
from dicomlb.dicom.uids import EXPLICIT_VR_LE, Encoding
from dicomlb.snapshot import (
    BackendConfig,
    CalledAet,
    DicomAddress,
    DicomListenerConfig,
    HealthConfig,
    MessageFacts,
    ScanLimit,
    Strategy,
    UpstreamMode,
)

EXAMPLE = """\
listeners:
  dicom: {bind: "0.0.0.0:11112", ae_title: DICOMLB}
pools:
  ct:
    strategy: affinity            # weighted rendezvous hashing
    key: StudyInstanceUID
    health: {interval: 5s, timeout: 2s, fall: 3, rise: 2}
    backends:
      - {name: pacs-a, dicom: "PACSA@10.0.0.5:4242", max_associations: 4}
      - {name: pacs-b, dicom: "PACSB@10.0.0.6:4242", weight: 2}
  general:
    strategy: round_robin
    backends:
      - {name: store-1, dicom: "STORE1@10.0.0.7:104"}
routes:
  - name: ct-and-pet
    match: {Modality: [CT, PT], calling_aet: {regex: "^CT_"}}
    pool: ct
  - name: default
    pool: general
"""

MODALITY = 0x00080060
STUDY_UID = 0x0020000D


def facts(calling_aet: str = "CT_1", **tags: str) -> MessageFacts:
    table = {"Modality": MODALITY, "StudyInstanceUID": STUDY_UID}
    return MessageFacts(
        calling_aet=calling_aet,
        called_aet="DICOMLB",
        peer_ip="10.1.2.3",
        command="C-STORE",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        tags={table[k]: v for k, v in tags.items()},
    )


def example() -> dict[str, Any]:
    return yaml.safe_load(EXAMPLE)


def load_text(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "lb.yaml"
    path.write_text(text)
    return load_snapshot(path)


# --- the example ----------------------------------------------------------------------------


def test_example_loads_to_the_expected_snapshot(tmp_path: Path) -> None:
    snap = load_text(tmp_path, EXAMPLE)

    assert snap.source == str(tmp_path / "lb.yaml")
    assert snap.dicom == DicomListenerConfig(host="0.0.0.0", port=11112, ae_title="DICOMLB")
    assert list(snap.pools) == ["ct", "general"]
    ct = snap.pools["ct"]
    assert ct.strategy is Strategy.AFFINITY
    assert (ct.key, ct.key_name) == (STUDY_UID, "StudyInstanceUID")
    assert ct.health == HealthConfig(interval=5.0, timeout=2.0, fall=3, rise=2)
    assert ct.called_aet is CalledAet.BACKEND
    assert ct.backends == (
        BackendConfig(
            name="pacs-a",
            dicom=DicomAddress(ae_title="PACSA", host="10.0.0.5", port=4242),
            max_associations=4,
        ),
        BackendConfig(
            name="pacs-b",
            dicom=DicomAddress(ae_title="PACSB", host="10.0.0.6", port=4242),
            weight=2,
        ),
    )
    general = snap.pools["general"]
    assert general.strategy is Strategy.ROUND_ROBIN
    assert (general.key, general.key_name) == (None, None)
    assert general.health == HealthConfig()
    assert [b.name for b in general.backends] == ["store-1"]

    assert [r.name for r in snap.routes] == ["ct-and-pet", "default"]
    assert snap.routes[0].pool is ct
    assert snap.routes[1].pool is general
    assert snap.routes[0].match_text == "Modality in [CT, PT] and calling_aet ~ /^CT_/"
    assert snap.routes[1].match_text == "everything"
    assert snap.routes[0].match(facts(Modality="PT"))
    assert not snap.routes[0].match(facts(Modality="MR"))
    assert not snap.routes[0].match(facts("MR_1", Modality="CT"))
    assert snap.routes[1].match(facts())

    assert snap.wanted_tags == frozenset({MODALITY, STUDY_UID})
    assert snap.graceful_timeout == 30.0


def test_describe_summarises_listeners_routes_and_pools() -> None:
    text = describe(build_snapshot(example(), "lb.yaml"))
    assert text.splitlines() == [
        "config: lb.yaml",
        "dicom listener: DICOMLB on 0.0.0.0:11112",
        "  called AE title checked: no; max associations 200 (per calling AE: no limit); "
        "max PDU 65536",
        "  allowed: any calling AE title from any address; associations per address: "
        "no limit; negotiating at once: 128 (per address: 16)",
        "  timeouts: ARTIM 30s, idle 5m; C-ECHO: answered by dicomlb",
        "  transfer syntaxes: any (other UIDs than the standard ones as encapsulated)",
        "routes (first match wins):",
        "  1. ct-and-pet: Modality in [CT, PT] and calling_aet ~ /^CT_/ -> pool ct",
        "  2. default: everything -> pool general",
        "pools:",
        "  ct: affinity on StudyInstanceUID (0020,000D); health: every 5s, timeout 2s, "
        "fall 3, rise 2",
        "    called AE title: backend; timeouts: connect 5s, acquire 30s, response 2m, idle 15s",
        "    - pacs-a: PACSA@10.0.0.5:4242  weight 1, max associations 4, max PDU 16384",
        "    - pacs-b: PACSB@10.0.0.6:4242  weight 2, max associations 4, max PDU 16384",
        "  general: round_robin; health: every 5s, timeout 2s, fall 3, rise 2",
        "    called AE title: backend; timeouts: connect 5s, acquire 30s, response 2m, idle 15s",
        "    - store-1: STORE1@10.0.0.7:104  weight 1, max associations 4, max PDU 16384",
        "routing tags: Modality (0008,0060), StudyInstanceUID (0020,000D)",
        "graceful timeout: 30s",
        "admin listener: none",
        "reload on file change: no",
    ]


def test_every_option_is_read() -> None:
    data = example()
    data["graceful_timeout"] = "1m30s"
    data["listeners"]["dicom"].update(
        bind="[::]:104",
        ae_title=" LB ",
        check_called_aet=True,
        max_associations=50,
        max_associations_per_calling_aet=5,
        max_pdu=0,
        artim_timeout="500ms",
        idle_timeout=60,
        transfer_syntaxes=["ExplicitVRLittleEndian", "1.2.840.10008.1.2", EXPLICIT_VR_LE],
        echo="general",
    )
    data["pools"]["general"].update(
        strategy="least_connections",
        health={"enabled": False},
        called_aet="passthrough",
        connect_timeout=1,
        acquire_timeout="2s",
        response_timeout="1h",
        idle_timeout=0.25,
    )
    data["pools"]["general"]["backends"][0].update(dicom="STORE1@[fd00::7]:11112", max_pdu=131072)
    data["pools"]["ct"]["key"] = "(0010,0020)"
    snap = build_snapshot(data)

    assert snap.graceful_timeout == 90.0
    assert snap.dicom == DicomListenerConfig(
        host="::",
        port=104,
        ae_title="LB",
        check_called_aet=True,
        max_associations=50,
        max_associations_per_calling_aet=5,
        max_pdu=0,
        artim_timeout=0.5,
        idle_timeout=60.0,
        transfer_syntaxes=(EXPLICIT_VR_LE, "1.2.840.10008.1.2"),
        any_transfer_syntax=False,
        echo_pool=snap.pools["general"],
    )
    general = snap.pools["general"]
    assert general.strategy is Strategy.LEAST_CONNECTIONS
    assert general.health == HealthConfig(enabled=False)
    assert general.called_aet is CalledAet.PASSTHROUGH
    assert (general.connect_timeout, general.acquire_timeout) == (1.0, 2.0)
    assert (general.response_timeout, general.idle_timeout) == (3600.0, 0.25)
    assert general.backends[0].dicom == DicomAddress(ae_title="STORE1", host="fd00::7", port=11112)
    assert general.backends[0].max_pdu == 131072
    assert snap.pools["ct"].key == 0x00100020
    assert snap.wanted_tags == frozenset({MODALITY, 0x00100020})
    text = describe(snap)
    assert "dicom listener: LB on [::]:104" in text
    assert "C-ECHO: pool general" in text
    assert "transfer syntaxes: ExplicitVRLittleEndian, ImplicitVRLittleEndian" in text
    assert "    - store-1: STORE1@[fd00::7]:11112  weight 1" in text
    assert "general: least_connections; health: off" in text


def test_transfer_syntaxes_any_and_declared_encodings() -> None:
    data = example()
    data["listeners"]["dicom"]["transfer_syntaxes"] = [
        "any",
        {"uid": "1.2.840.113619.5.99", "encoding": "implicit_little"},
        {"uid": "1.2.840.10008.1.2.4.201"},
    ]
    dicom = build_snapshot(data).dicom
    assert dicom is not None
    assert dicom.any_transfer_syntax
    assert dicom.encodings == {"1.2.840.113619.5.99": Encoding.IMPLICIT_LITTLE}
    assert dicom.encoding("1.2.840.113619.5.99") is Encoding.IMPLICIT_LITTLE
    assert dicom.encoding("1.2.840.10008.1.2.4.57") is Encoding.ENCAPSULATED
    assert dicom.encoding("1.2.840.10008.1.2.4.95") is Encoding.DEFLATED
    assert dicom.encoding("1.2.840.10008.1.2.2") is Encoding.EXPLICIT_BIG
    assert dicom.encoding("1.2.x") is None
    text = describe(build_snapshot(data))
    assert (
        "transfer syntaxes: any (other UIDs than the standard ones as encapsulated), "
        "1.2.840.113619.5.99 (implicit_little)"
    ) in text


def test_a_listed_transfer_syntax_restricts_and_may_declare() -> None:
    data = example()
    data["listeners"]["dicom"]["transfer_syntaxes"] = [
        "JPEGLossless",
        {"uid": "1.2.3.4", "encoding": "explicit_big"},
    ]
    dicom = build_snapshot(data).dicom
    assert dicom is not None
    assert not dicom.any_transfer_syntax
    assert dicom.encoding("1.2.840.10008.1.2.4.57") is Encoding.ENCAPSULATED
    assert dicom.encoding("1.2.3.4") is Encoding.EXPLICIT_BIG
    assert dicom.encoding(EXPLICIT_VR_LE) is None


def test_affinity_key_defaults_to_study_instance_uid() -> None:
    data = example()
    del data["pools"]["ct"]["key"]
    pool = build_snapshot(data).pools["ct"]
    assert (pool.key, pool.key_name) == (STUDY_UID, "StudyInstanceUID")


def test_listeners_are_optional_and_routes_then_too() -> None:
    data = example()
    del data["listeners"]
    del data["routes"]
    snap = build_snapshot(data)
    assert snap.dicom is None
    assert snap.routes == ()
    assert snap.wanted_tags == frozenset({STUDY_UID})


def test_a_listener_without_options_takes_the_defaults() -> None:
    data = example()
    data["listeners"]["dicom"] = {}
    assert build_snapshot(data).dicom == DicomListenerConfig()


def test_the_snapshot_pools_cannot_be_changed() -> None:
    snap = build_snapshot(example())
    with pytest.raises(TypeError):
        snap.pools["x"] = snap.pools["ct"]  # type: ignore[index]


# --- errors ---------------------------------------------------------------------------------

Mutation = Callable[[dict[str, Any]], None]


def backend(i: int, **fields: Any) -> Mutation:
    return lambda d: d["pools"]["ct"]["backends"][i].update(fields)


def pool(name: str, **fields: Any) -> Mutation:
    return lambda d: d["pools"][name].update(fields)


def route(i: int, **fields: Any) -> Mutation:
    return lambda d: d["routes"][i].update(fields)


def listener(**fields: Any) -> Mutation:
    return lambda d: d["listeners"]["dicom"].update(fields)


BAD_CONFIGS: list[tuple[str, Mutation, str]] = [
    (
        "missing port",
        backend(1, dicom="ORTHANC@10.0.0.5"),
        'pools.ct.backends[1].dicom: "ORTHANC@10.0.0.5" has no port; write AET@host:port',
    ),
    (
        "missing AE title",
        backend(1, dicom="10.0.0.5:104"),
        'pools.ct.backends[1].dicom: "10.0.0.5:104" has no AE title; write AET@host:port',
    ),
    (
        "IPv6 without brackets",
        backend(0, dicom="A@fd00::1:104"),
        'pools.ct.backends[0].dicom: "A@fd00::1:104": an IPv6 address needs brackets; '
        "write AET@host:port with [host]",
    ),
    (
        "port out of range",
        backend(0, dicom="A@h:70000"),
        'pools.ct.backends[0].dicom: "A@h:70000": port "70000" is not a number from 1 to 65535; '
        "write AET@host:port",
    ),
    (
        "bad host",
        backend(0, dicom="A@bad_host:104"),
        'pools.ct.backends[0].dicom: "A@bad_host:104": "bad_host" is not a host name or IP '
        "address; write AET@host:port",
    ),
    (
        "AE title too long",
        backend(0, dicom="ABCDEFGHIJKLMNOPQ@h:104"),
        'pools.ct.backends[0].dicom: "ABCDEFGHIJKLMNOPQ" is not an AE title: it has 17 '
        "characters; shorten it to 16 or fewer",
    ),
    (
        "AE title with a backslash",
        listener(ae_title="A\\B"),
        'listeners.dicom.ae_title: "A\\B" is not an AE title: it has a backslash, control or '
        "non-ASCII character; use letters, digits, spaces and punctuation only",
    ),
    (
        "AE title all spaces",
        listener(ae_title="   "),
        'listeners.dicom.ae_title: "   " is not an AE title: it is empty; write 1-16 characters',
    ),
    (
        "unknown key",
        backend(1, wieght=2),
        'pools.ct.backends[1].wieght: unknown key "wieght"; did you mean "weight"? '
        "allowed keys: name, dicom, http, weight, max_associations, max_pdu",
    ),
    (
        "unknown top-level key",
        lambda d: d.update(pool={}),
        'pool: unknown key "pool"; did you mean "pools"? '
        "allowed keys: listeners, pools, routes, http_routes, middlewares, graceful_timeout, "
        "watch, spool, dicom_nodes, state_dir, providers, instances",
    ),
    (
        "unknown listener key",
        listener(port=104),
        'listeners.dicom.port: unknown key "port"; allowed keys: bind, ae_title, '
        "check_called_aet, max_associations, max_associations_per_calling_aet, max_pdu, "
        "artim_timeout, idle_timeout, transfer_syntaxes, echo",
    ),
    (
        "unknown pool in route",
        route(0, pool="cx"),
        'routes[0].pool: route "ct-and-pet" sends to pool "cx", which does not exist; '
        "use one of ct, general",
    ),
    (
        "duplicate backend names across pools",
        lambda d: d["pools"]["general"]["backends"][0].update(name="pacs-b"),
        'pools.general.backends[0].name: backend "pacs-b" is already defined at '
        "pools.ct.backends[1]; a backend name stands for one node, so give each backend its "
        "own name",
    ),
    (
        "duplicate route names",
        route(1, name="ct-and-pet"),
        'routes[1].name: route "ct-and-pet" is already defined at routes[0]; give each route '
        "its own name",
    ),
    (
        "bad regex",
        route(0, match={"calling_aet": {"regex": "^(CT"}}),
        'routes[0].match.calling_aet.regex: "^(CT" is not a valid regular expression '
        "(missing ), unterminated subpattern at position 1); fix the pattern",
    ),
    (
        "bad duration",
        pool("ct", health={"interval": "5 minutes"}),
        'pools.ct.health.interval: "5 minutes" is not a duration; write seconds as a number '
        'or a string like "500ms", "5s", "2m", "1h" or "1m30s"',
    ),
    (
        "zero duration",
        pool("ct", connect_timeout=0),
        "pools.ct.connect_timeout: 0 must be more than zero; write seconds as a number or a "
        'string like "500ms", "5s", "2m", "1h" or "1m30s"',
    ),
    (
        "affinity key unknown keyword",
        pool("ct", key="StudyInstanceUId"),
        'pools.ct.key: "StudyInstanceUId" is not a DICOM keyword; did you mean '
        "StudyInstanceUID? write a keyword such as StudyInstanceUID or a tag such as "
        "(0020,000D)",
    ),
    (
        "key on a round robin pool",
        pool("general", key="PatientID"),
        "pools.general.key: key is used only by strategy affinity, and this pool is "
        "round_robin; remove key or set strategy: affinity",
    ),
    (
        "unreachable route",
        lambda d: d["routes"].append({"name": "late", "pool": "ct", "match": {"Modality": "MR"}}),
        'routes[2]: route "late" is unreachable: route "default" before it matches '
        'everything; move "default" last or give it a match',
    ),
    (
        "unknown strategy",
        pool("ct", strategy="fastest"),
        'pools.ct.strategy: "fastest" is not a strategy; use one of round_robin, weighted, '
        "least_connections or affinity",
    ),
    (
        "weight zero",
        backend(0, weight=0),
        "pools.ct.backends[0].weight: 0 is too small; write a number of at least 1 "
        "(to take a backend out of rotation, remove it from the pool)",
    ),
    (
        "fall zero",
        pool("ct", health={"fall": 0}),
        "pools.ct.health.fall: 0 is too small; write a number of at least 1",
    ),
    (
        "max PDU too small",
        backend(0, max_pdu=1024),
        "pools.ct.backends[0].max_pdu: 1024 is not a max PDU; write 0 (unlimited) or a number "
        "of bytes from 4096 to 4294967295",
    ),
    (
        "count as text",
        backend(0, max_associations="4"),
        'pools.ct.backends[0].max_associations: "4" is not a whole number; write one, e.g. 4',
    ),
    (
        "bool as text",
        listener(check_called_aet="yes"),
        'listeners.dicom.check_called_aet: "yes" is not true or false; write true or false',
    ),
    (
        "route without a name",
        lambda d: d["routes"][1].pop("name"),
        "routes[1].name: name is required; add it",
    ),
    (
        "bind without port",
        listener(bind="0.0.0.0"),
        'listeners.dicom.bind: "0.0.0.0" has no port; write host:port, e.g. 0.0.0.0:11112 '
        "or [::]:11112",
    ),
    (
        "unknown echo pool",
        listener(echo="pacs"),
        'listeners.dicom.echo: pool "pacs" does not exist; write "local" to answer C-ECHO '
        "here, or one of ct, general",
    ),
    (
        "not a transfer syntax",
        listener(transfer_syntaxes=["1.2.03"]),
        'listeners.dicom.transfer_syntaxes[0]: "1.2.03" is neither a transfer syntax name nor '
        "a UID; write e.g. JPEGLossless, 1.2.840.10008.1.2.4.57 or any",
    ),
    (
        "a SOP class as transfer syntax",
        listener(transfer_syntaxes=["1.2.840.10008.5.1.4.1.1.2"]),
        "listeners.dicom.transfer_syntaxes[0]: 1.2.840.10008.5.1.4.1.1.2 is a SOP Class (CT "
        "Image Storage), not a transfer syntax",
    ),
    (
        "a standard syntax declared otherwise",
        listener(transfer_syntaxes=[{"uid": "1.2.840.10008.1.2", "encoding": "explicit_big"}]),
        "listeners.dicom.transfer_syntaxes[0]: ImplicitVRLittleEndian is implicit_little "
        "(PS3.5), not explicit_big; leave its encoding out",
    ),
    (
        "unknown encoding",
        listener(transfer_syntaxes=[{"uid": "1.2.3.4", "encoding": "zip"}]),
        'listeners.dicom.transfer_syntaxes[0]: encoding "zip" of 1.2.3.4 is not one of '
        "implicit_little, explicit_little, explicit_big, deflated, encapsulated",
    ),
    (
        "entry without uid",
        listener(transfer_syntaxes=[{"encoding": "deflated"}]),
        "listeners.dicom.transfer_syntaxes[0]: the entry has no uid; write {uid: 1.2.3.4, "
        "encoding: encapsulated}",
    ),
    (
        "bad pool name",
        lambda d: d["pools"].update({"my pool": {"backends": [{"name": "x", "dicom": "X@h:1"}]}}),
        'pools.my pool: "my pool" is not a valid pool name; use up to 64 letters, digits, '
        '".", "_" and "-", starting with a letter or digit',
    ),
    (
        "empty pool",
        lambda d: d["pools"].update(general=None),
        "pools.general: is empty; write a value or remove the key",
    ),
    (
        "match on a misspelt keyword",
        route(0, match={"Modalty": "CT"}),
        'routes[0].match.Modalty: "Modalty" is not a match key or DICOM keyword; did you mean '
        "Modality? use one of calling_aet, called_aet, source, sop_class, command, all, any, "
        "not, a DICOM keyword or (gggg,eeee)",
    ),
    (
        "a YAML date in a match",
        route(0, match={"any": [{"Modality": "CT"}, {"StudyDate": 20240101.5}]}),
        "routes[0].match.any[1].StudyDate: 20240101.5 is not text; put it in quotes so YAML "
        "keeps it as written",
    ),
    (
        "a backend that is dicomlb itself",
        backend(0, dicom="PACSA@127.0.0.1:11112"),
        "pools.ct.backends[0].dicom: PACSA@127.0.0.1:11112 is dicomlb's own DICOM listener "
        "(0.0.0.0:11112); images would loop back into it — give the storage node's address",
    ),
    (
        "an HTTP backend that is dicomlb itself",
        lambda d: (
            d["listeners"].update(http={"bind": "127.0.0.1:8080"}),
            d.update(http_routes=[{"name": "web", "pool": "web"}]),
            d["pools"].update(web={"backends": [{"name": "w", "http": "http://localhost:8080"}]}),
        ),
        "pools.web.backends[0].http: http://localhost:8080 is dicomlb's own HTTP listener "
        "(127.0.0.1:8080); requests would loop back into it — give the web server's address",
    ),
    (
        "dicom listener without routes",
        lambda d: d.pop("routes"),
        "routes: there are no routes, so the dicom listener cannot forward anything; add one, "
        "e.g. - {name: default, pool: ct}",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [pytest.param(m, e, id=name) for name, m, e in BAD_CONFIGS],
)
def test_bad_config_error_text(mutate: Mutation, expected: str) -> None:
    data = example()
    mutate(data)
    with pytest.raises(ConfigError) as caught:
        build_snapshot(data, "lb.yaml")
    assert str(caught.value).startswith(f"lb.yaml: {expected}")
    assert len(caught.value.issues) == 1


@pytest.mark.parametrize(
    ("listen", "address"),
    [
        ("0.0.0.0:11112", "A@127.0.0.1:11113"),  # another port
        ("127.0.0.1:11112", "A@10.0.0.5:11112"),  # another machine
        ("10.0.0.9:11112", "A@127.0.0.1:11112"),  # the listener is not on loopback
    ],
)
def test_a_backend_beside_the_listener_is_not_a_loop(listen: str, address: str) -> None:
    data = example()
    data["listeners"]["dicom"]["bind"] = listen
    data["pools"]["ct"]["backends"][0]["dicom"] = address
    assert build_snapshot(data).pools["ct"].backends[0].dicom is not None


def test_several_errors_give_one_line_each() -> None:
    data = example()
    data["pools"]["ct"]["backends"][1]["dicom"] = "ORTHANC@10.0.0.5"
    data["pools"]["ct"]["health"]["rise"] = 0
    with pytest.raises(ConfigError) as caught:
        build_snapshot(data, "lb.yaml")
    assert str(caught.value).splitlines() == [
        "lb.yaml: pools.ct.health.rise: 0 is too small; write a number of at least 1",
        'lb.yaml: pools.ct.backends[1].dicom: "ORTHANC@10.0.0.5" has no port; write AET@host:port',
    ]


def test_cross_field_errors_are_all_reported() -> None:
    data = example()
    data["routes"][0]["pool"] = "cx"
    data["routes"][1]["match"] = {"Modality": {"regex": "("}}
    data["pools"]["general"]["key"] = "PatientID"
    with pytest.raises(ConfigError) as caught:
        build_snapshot(data, "lb.yaml")
    assert [i.path for i in caught.value.issues] == [
        "pools.general.key",
        "routes[0].pool",
        "routes[1].match.Modality.regex",
    ]


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    text = "pools:\n  ct:\n    backends: [\n  - x: y: z\n"
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text)
    assert str(caught.value) == (
        f"{tmp_path / 'lb.yaml'}:4: YAML syntax error: expected the node content, but found "
        "'-' (column 3); check indentation, colons and quoting on that line"
    )


def test_yaml_duplicate_key_is_an_error(tmp_path: Path) -> None:
    text = EXAMPLE.replace("  general:\n", "  ct:\n")
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text)
    assert str(caught.value) == (
        f'{tmp_path / "lb.yaml"}:11: duplicate key "ct" (first at line 4); keep one of them'
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "the configuration is empty; write pools and routes"),
        ("- a\n", "the top level is a list; write a mapping with listeners, pools and routes"),
        ("routes: []\n", "pools: pools is required; add it"),
    ],
)
def test_file_shape_errors(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text)
    assert str(caught.value) == f"{tmp_path / 'lb.yaml'}: {expected}"


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read the file .*; check the path"):
        load_snapshot(tmp_path / "nope.yaml")


def test_build_snapshot_leaves_its_input_alone() -> None:
    data = example()
    before = copy.deepcopy(data)
    build_snapshot(data)
    assert data == before


# --- durations ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "seconds"),
    [
        (5, 5.0),
        (0.5, 0.5),
        ("5", 5.0),
        ("500ms", 0.5),
        ("5s", 5.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        ("1h 30m", 5400.0),
        ("1.5s", 1.5),
        (" 10s ", 10.0),
        (0, 0.0),
    ],
)
def test_durations(written: Any, seconds: float) -> None:
    assert parse_duration(written) == seconds


@pytest.mark.parametrize(
    "written", ["", "s", "5 minutes", "5x", "-1", -1, True, None, [5], "1s5", float("inf"), "ms5"]
)
def test_bad_durations(written: Any) -> None:
    with pytest.raises(ValueError, match="is not a duration; write seconds as a number"):
        parse_duration(written)


@given(st.integers(min_value=1, max_value=10**9))
def test_duration_round_trip_in_milliseconds(millis: int) -> None:
    seconds = millis / 1000
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False))
def test_duration_round_trip_any_float(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.integers(0, 99), st.integers(0, 59), st.integers(0, 59), st.integers(0, 999))
def test_compound_durations_add_up(h: int, m: int, s: int, ms: int) -> None:
    text = f"{h}h{m}m{s}s{ms}ms"
    assert math.isclose(parse_duration(text), h * 3600 + m * 60 + s + ms / 1000)


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.5, "500ms"), (5, "5s"), (120, "2m"), (7200, "2h"), (90, "90s")]
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_scan_limit_settings() -> None:
    data = example()
    snapshot = build_snapshot(data, "lb.yaml")
    assert snapshot.dicom is not None and snapshot.dicom.scan_budget == 64 << 20
    assert {route.on_scan_limit for route in snapshot.routes} == {ScanLimit.REFUSE}
    data["listeners"]["dicom"]["scan_budget"] = "8MiB"
    data["routes"][0]["on_scan_limit"] = "route"
    snapshot = build_snapshot(data, "lb.yaml")
    assert snapshot.dicom is not None and snapshot.dicom.scan_budget == 8 << 20
    assert snapshot.routes[0].on_scan_limit is ScanLimit.ROUTE
    for key, value, expected in [
        ("scan_budget", "100kB", 'listeners.dicom.scan_budget: "100kB" is less than one'),
        ("on_scan_limit", "drop", 'routes[0].on_scan_limit: "drop" is not what to do when'),
    ]:
        data = example()
        where = data["listeners"]["dicom"] if key == "scan_budget" else data["routes"][0]
        where[key] = value
        with pytest.raises(ConfigError) as caught:
            build_snapshot(data, "lb.yaml")
        assert str(caught.value).startswith(f"lb.yaml: {expected}")


def test_pool_upstream_mode() -> None:
    data = yaml.safe_load(EXAMPLE)
    assert build_snapshot(copy.deepcopy(data)).pools["ct"].upstream is UpstreamMode.SHARED
    data["pools"]["ct"]["upstream"] = "per_client"
    snap = build_snapshot(data)
    assert snap.pools["ct"].upstream is UpstreamMode.PER_CLIENT
    assert "upstream associations: one per client association, none kept idle" in describe(snap)
    data["pools"]["ct"]["upstream"] = "private"
    with pytest.raises(ConfigError) as info:
        build_snapshot(data)
    assert 'pools.ct.upstream: "private" is not a upstream; use one of shared or per_client' in str(
        info.value
    )

"""Admission on the DICOM listener (pure decisions), its config, and the descriptor helpers."""

from __future__ import annotations

import ipaddress
import resource
import subprocess
import sys
from typing import Any

import pytest

from dicomlb.config import ConfigError, build_snapshot
from dicomlb.descriptors import in_headroom
from dicomlb.dicom.admission import (
    LogBudget,
    admit_association,
    admit_connection,
    allowed,
    source_address,
)
from dicomlb.dicom.pdu import RejectResult, RejectSource
from dicomlb.snapshot import AllowRule, DicomListenerConfig

RULES = (
    AllowRule(aet="CT1"),
    AllowRule(network=ipaddress.ip_network("10.1.2.0/24")),
    AllowRule(aet="MR*", network=ipaddress.ip_network("10.1.3.0/24")),
    AllowRule(network=ipaddress.ip_network("fd00::/64")),
)


@pytest.mark.parametrize(
    ("aet", "ip", "expected"),
    [
        ("CT1", "192.168.0.9", True),  # the AE title alone is enough
        ("CT2", "192.168.0.9", False),
        ("ct1", "192.168.0.9", False),  # AE titles compare case-sensitively
        ("ANY", "10.1.2.77", True),  # the network alone is enough
        ("ANY", "::ffff:10.1.2.77", True),  # IPv4 client of a dual-stack listener
        ("MR_3T", "10.1.3.5", True),  # both given: both must match
        ("MR_3T", "10.1.4.5", False),
        ("CT2", "10.1.3.5", False),
        ("ANY", "fd00::17", True),
        ("ANY", "fd01::17", False),
        ("ANY", "not-an-address", False),
    ],
)
def test_allow_list_rule_matches_when_every_given_field_does(
    aet: str, ip: str, expected: bool
) -> None:
    assert allowed(RULES, aet, ip) is expected


def test_no_allow_list_admits_everyone() -> None:
    assert allowed((), "WHOEVER", "203.0.113.9")


def test_source_address_unwraps_ipv4_mapped_and_scope() -> None:
    assert str(source_address("::ffff:10.0.0.1")) == "10.0.0.1"
    assert str(source_address("fe80::1%eth0")) == "fe80::1"
    assert source_address("") is None


def listener(**fields: Any) -> DicomListenerConfig:
    return DicomListenerConfig(**fields)


def associate(config: DicomListenerConfig, **counts: Any) -> Any:
    facts: dict[str, Any] = {
        "calling_aet": "CT1",
        "peer_ip": "10.0.0.1",
        "active": 0,
        "active_from_ip": 0,
        "active_from_aet": 0,
    }
    return admit_association(config, **(facts | counts))


def test_unlisted_calling_ae_is_rejected_permanently_calling_ae_not_recognized() -> None:
    config = listener(allow=RULES)
    rejection = associate(config, calling_aet="INTRUDER", peer_ip="192.168.0.9")
    assert rejection is not None and rejection.setting == "allow"
    # PS3.8 9.3.4: rejected-permanent, source 1 (service user), reason 3
    assert rejection.answer.result == RejectResult.PERMANENT
    assert rejection.answer.source == RejectSource.SERVICE_USER
    assert rejection.answer.reason == 3
    assert associate(config, calling_aet="CT1", peer_ip="192.168.0.9") is None


def test_allow_list_comes_before_the_limits() -> None:
    config = listener(allow=RULES, max_associations=1)
    rejection = associate(config, calling_aet="INTRUDER", active=5)
    assert rejection is not None and rejection.setting == "allow"


@pytest.mark.parametrize(
    ("fields", "counts", "setting"),
    [
        ({"max_associations": 3}, {"active": 3}, "max_associations"),
        (
            {"max_associations_per_ip": 2},
            {"active": 2, "active_from_ip": 2},
            "max_associations_per_ip",
        ),
        (
            {"max_associations_per_calling_aet": 2},
            {"active": 2, "active_from_aet": 2},
            "max_associations_per_calling_aet",
        ),
    ],
)
def test_association_limits_reject_transient_local_limit(
    fields: dict[str, Any], counts: dict[str, int], setting: str
) -> None:
    config = listener(**fields)
    rejection = associate(config, **counts)
    assert rejection is not None and rejection.setting == setting
    # PS3.8 9.3.4: rejected-transient, source 3 (presentation), reason 2 (local limit)
    assert rejection.answer.result == RejectResult.TRANSIENT
    assert rejection.answer.source == RejectSource.SERVICE_PROVIDER_PRESENTATION
    assert rejection.answer.reason == 2
    one_less = {name: value - 1 for name, value in counts.items()}
    assert associate(config, **one_less) is None


def test_per_ip_limit_holds_whatever_the_ae_title() -> None:
    config = listener(max_associations_per_ip=2, max_associations_per_calling_aet=2)
    # every association from this address used another AE title: the per-AE count is 0
    rejection = associate(config, calling_aet="FRESH", active=2, active_from_ip=2)
    assert rejection is not None and rejection.setting == "max_associations_per_ip"


def test_zero_means_no_per_ip_or_per_aet_limit() -> None:
    assert associate(listener(), active=5, active_from_ip=5, active_from_aet=5) is None


def test_negotiating_connections_are_capped_overall_and_per_address() -> None:
    config = listener(max_negotiating=10, max_negotiating_per_ip=3)
    assert admit_connection(config, negotiating=9, negotiating_from_ip=2) is None
    total = admit_connection(config, negotiating=10, negotiating_from_ip=0)
    assert total is not None and total.setting == "max_negotiating"
    per_ip = admit_connection(config, negotiating=3, negotiating_from_ip=3)
    assert per_ip is not None and per_ip.setting == "max_negotiating_per_ip"


def test_negotiating_defaults() -> None:
    config = listener()
    assert (config.max_negotiating, config.max_negotiating_per_ip) == (128, 16)
    assert config.max_associations_per_ip == 0


def test_log_budget_one_line_per_period_and_counts_what_it_held() -> None:
    budget = LogBudget(period=1.0)
    assert budget.take(100.0) == 0
    assert [budget.take(100.0 + i / 10) for i in range(1, 10)] == [None] * 9
    assert budget.take(101.0) == 9
    assert budget.take(101.5) is None
    assert budget.take(105.0) == 1


def test_headroom_keeps_the_last_descriptors() -> None:
    assert not in_headroom(959, 1024, 64)
    assert in_headroom(960, 1024, 64)
    assert not in_headroom(10**6, None, 64)  # unlimited


def test_raise_limit_lifts_the_soft_limit_to_the_hard_one() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    low = 256 if hard == resource.RLIM_INFINITY else min(256, hard)

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))

    script = (
        "import resource; from dicomlb.descriptors import raise_limit; "
        "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0], raise_limit(), "
        "resource.getrlimit(resource.RLIMIT_NOFILE))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        preexec_fn=lower,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.split(maxsplit=1)
    assert int(out[0]) == low
    expected = None if hard == resource.RLIM_INFINITY else hard
    assert out[1].strip() == f"({expected}, {expected}) ({hard}, {hard})"


# --- config ---------------------------------------------------------------------------------


def config_with(**dicom: Any) -> dict[str, Any]:
    return {
        "listeners": {"dicom": {"bind": "127.0.0.1:11112", **dicom}},
        "pools": {"p": {"backends": [{"name": "a", "dicom": "A@127.0.0.1:104"}]}},
        "routes": [{"name": "all", "pool": "p"}],
    }


def test_allow_list_as_an_imaging_engineer_writes_it() -> None:
    snapshot = build_snapshot(
        config_with(
            allow=[{"aet": "CT1"}, {"cidr": "10.1.2.0/24"}, {"aet": "MR*", "cidr": "10.1.3.0/24"}],
            max_associations_per_ip=16,
            max_negotiating=50,
            max_negotiating_per_ip=4,
            artim_timeout="10s",
        )
    )
    dicom = snapshot.dicom
    assert dicom is not None
    assert dicom.allow == (
        AllowRule(aet="CT1"),
        AllowRule(network=ipaddress.ip_network("10.1.2.0/24")),
        AllowRule(aet="MR*", network=ipaddress.ip_network("10.1.3.0/24")),
    )
    assert (dicom.max_associations_per_ip, dicom.max_negotiating) == (16, 50)
    assert (dicom.max_negotiating_per_ip, dicom.artim_timeout) == (4, 10.0)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {"allow": [{"aet": "CT1"}, {}]},
            "listeners.dicom.allow[1]: names nothing to allow; write {aet: CT1}, "
            "{cidr: 10.1.2.0/24} or both",
        ),
        (
            {"allow": [{"cidr": "10.1.2.5/24"}]},
            'listeners.dicom.allow[0].cidr: "10.1.2.5/24" has bits set after the prefix; write '
            "10.1.2.0/24 for the network, or the address alone for one host",
        ),
        (
            {"allow": [{"cidr": "10.1.2"}]},
            'listeners.dicom.allow[0].cidr: "10.1.2" is not an address or network',
        ),
        (
            {"allow": [{"aet": "A_VERY_LONG_AE_TITLE"}]},
            'listeners.dicom.allow[0].aet: "A_VERY_LONG_AE_TITLE" is not an AE title',
        ),
        (
            {"allow": [{"ae": "CT1"}]},
            'listeners.dicom.allow[0].ae: unknown key "ae"; did you mean "aet"?',
        ),
        ({"allow": []}, "listeners.dicom.allow: "),
        (
            {"max_associations_per_ip": -1},
            "listeners.dicom.max_associations_per_ip: -1 is too small",
        ),
        ({"max_negotiating_per_ip": 0}, "listeners.dicom.max_negotiating_per_ip: 0 is too small"),
    ],
)
def test_admission_config_errors_name_the_field(fields: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_snapshot(config_with(**fields), "lb.yaml")
    assert str(caught.value).startswith(f"lb.yaml: {expected}")

"""contrib/prometheus/dicomlb-alerts.yaml: valid rules, on metrics dicomlb exports, each one
firing when it should (`promtool test rules`, Debian's `prometheus` package)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from dicomlb import metrics

RULES = Path(__file__).parents[2] / "contrib" / "prometheus" / "dicomlb-alerts.yaml"
RULE_TESTS = RULES.with_name("dicomlb-alerts.test.yaml")
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="needs promtool (apt-get install prometheus)"
)


def rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def exported_names() -> set[str]:
    """Every metric name metrics.py registers or collects; counters also with `_total`."""
    source = Path(metrics.__file__).read_text()
    names = set(re.findall(r'"(dicomlb_[a-z_]+)"', source))
    return names | {f"{name}_total" for name in names}


def test_every_rule_is_an_alert_with_for_severity_and_text() -> None:
    found = rules()
    assert len(found) >= 6
    for rule in found:
        assert rule["alert"].startswith("Dicomlb"), rule
        assert "for" in rule, rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert rule["annotations"]["description"].strip(), rule["alert"]


def test_rules_read_only_metrics_dicomlb_exports() -> None:
    exported = exported_names()
    assert "dicomlb_spool_dispatcher_up" in exported
    assert "dicomlb_tls_certificate_expiry_seconds" in exported
    for rule in rules():
        used = set(re.findall(r"\bdicomlb_[a-z_]+", rule["expr"]))
        assert used, rule["alert"]
        assert used <= exported, f"{rule['alert']}: {sorted(used - exported)} not exported"


def test_every_alert_has_a_firing_case_in_the_rule_tests() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    firing = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert firing == {rule["alert"] for rule in rules()}


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_rule_tests_pass() -> None:
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "test", "rules", RULE_TESTS.name],
        cwd=RULE_TESTS.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr

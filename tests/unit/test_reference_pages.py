"""The generated reference pages (docs/reference/cli.md, metrics.md, log-events.md and
configuration.md): committed as generated, complete, and the log-event extractor sound."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from dicomlb import cli
from dicomlb.reference import (
    COMMAND,
    PAGES,
    cli_page,
    exercised_metrics,
    metric_families,
    metrics_page,
    package_events,
)
from dicomlb.reference.__main__ import main as write_pages
from dicomlb.reference.log_events import CALLER, ExtractionError, calls_in
from dicomlb.reference.meanings import MEANINGS

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "reference"


@pytest.mark.parametrize("name", sorted(PAGES))
def test_the_committed_page_is_what_the_generator_writes(name: str) -> None:
    committed = (REFERENCE / name).read_text(encoding="utf-8")
    assert committed == PAGES[name](), (
        f"docs/reference/{name} is out of date; regenerate the reference pages with "
        f"`{COMMAND}` (from the repository root) and commit them"
    )


def test_the_regeneration_command_is_documented() -> None:
    assert COMMAND in (REFERENCE / "index.md").read_text(encoding="utf-8")


def test_the_command_writes_every_page_and_then_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "reference").mkdir()
    assert write_pages([str(tmp_path)]) == 0
    assert sorted(p.name for p in (tmp_path / "reference").iterdir()) == sorted(PAGES)
    assert capsys.readouterr().out.count("wrote ") == len(PAGES)
    assert write_pages([str(tmp_path)]) == 0
    assert capsys.readouterr().out == ""
    assert write_pages([str(tmp_path / "missing")]) == 2


# --- CLI ----------------------------------------------------------------------------------


def test_the_cli_page_has_every_command_and_option() -> None:
    page = cli_page()
    for command in ("", " run", " check", " schema", " demo", " hash-password", " route"):
        assert f"### `dicomlb{command}`" in page
    for action in ("ls", "show", "retry", "purge"):
        assert f"### `dicomlb spool {action}`" in page
    for option in ("--log-format", "--markdown", "--admin-port", "--state", "--delivered"):
        assert f"`{option}`" in page
    assert "| `--limit` | `LIMIT` | `100` |" in page
    assert "| `-c`, `--config` | `CONFIG` | required |" in page


def test_cli_help_is_what_the_page_documents(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["route", "--help"])
    for line in capsys.readouterr().out.splitlines():
        option = line.strip().split(" ")[0].rstrip(",")
        if option.startswith("--") and option != "--help":
            assert f"`{option}`" in cli_page(), option


# --- metrics ------------------------------------------------------------------------------

# Every metric the hand-kept page listed before it was generated: none may go missing.
HAND_KEPT = str.split("""
dicomlb_messages_total dicomlb_relay_duration_seconds dicomlb_route_hits_total
dicomlb_associations_total dicomlb_associations_accepted_total dicomlb_associations_active
dicomlb_received_bytes_total dicomlb_backend_up dicomlb_backend_enabled dicomlb_backend_active
dicomlb_backend_associations dicomlb_backend_transitions_total dicomlb_health_checks_total
dicomlb_pool_available_backends dicomlb_ready dicomlb_config_reloads_total
dicomlb_config_last_reload_successful dicomlb_config_last_reload_timestamp_seconds
dicomlb_admin_actions_total dicomlb_http_requests_total dicomlb_http_request_duration_seconds
dicomlb_http_active_connections dicomlb_tls_certificate_expiry_seconds dicomlb_spool_items
dicomlb_spool_backend_items dicomlb_spool_bytes dicomlb_spool_oldest_age_seconds
dicomlb_spool_dead_items dicomlb_spool_accepting dicomlb_spool_dispatcher_up
dicomlb_spool_free_disk_bytes dicomlb_spool_max_items dicomlb_spool_max_bytes
dicomlb_spool_breaker_open dicomlb_spool_deliveries_total dicomlb_spool_spooled_total
dicomlb_spool_refused_total dicomlb_spool_commit_seconds dicomlb_spool_operations_total
""")


def test_every_metric_of_the_hand_kept_page_is_generated() -> None:
    page = metrics_page()
    missing = [name for name in HAND_KEPT if f"| `{name}` |" not in page]
    assert not missing, missing


def test_every_family_is_exercised_so_its_labels_show() -> None:
    families = metric_families(exercised_metrics())
    assert len(families) >= len(HAND_KEPT)
    silent = [name for name, _, _, _, sampled in families if not sampled]
    assert not silent, (
        f"{silent} have no series in dicomlb.reference.exercised_metrics(); give each one "
        "so that the metrics page shows its labels"
    )
    assert all(text.strip() for _, _, _, text, _ in families)
    by_name = {name: labels for name, _, labels, _, _ in families}
    assert by_name["dicomlb_messages_total"] == (
        "command",
        "status_class",
        "route",
        "pool",
        "backend",
    )
    assert by_name["dicomlb_relay_duration_seconds"] == ("command", "pool", "backend")


# --- log events ---------------------------------------------------------------------------


def test_every_logged_event_has_a_meaning_and_every_meaning_an_event() -> None:
    logged = {event.name for event in package_events()}
    assert len(logged) > 80
    undescribed = sorted(logged - set(MEANINGS))
    assert not undescribed, (
        f"log events without a meaning: {undescribed}; describe them in "
        f"src/dicomlb/reference/meanings.py, then run `{COMMAND}`"
    )
    stale = sorted(set(MEANINGS) - logged)
    assert not stale, f"meanings of events no code logs: {stale}"
    assert all(text.strip() for text in MEANINGS.values())


def test_the_fate_events_are_read_with_their_levels_and_keys() -> None:
    events = {event.name: event for event in package_events()}
    assert events["store.dead"].levels == ("ERROR",)
    assert events["store.received"].levels == ("DEBUG",)
    assert events["store.delivered"].levels == ("INFO",)  # paired with its condition
    assert events["backend.declined"].levels == ("DEBUG", "WARNING")
    assert {"sop_instance_uid", "route", "pool", "backend", "status", "ms"} <= set(
        events["store.delivered"].keys
    )
    assert {"move.failed", "get.failed", "backend.declined", "backend.unreachable"} <= set(events)


def _calls(source: str) -> list[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]]:
    return [(c.events, c.levels, c.keys) for c in calls_in(textwrap.dedent(source), "m.py")]


def test_the_extractor_reads_constants_locals_callers_and_levels() -> None:
    source = """
        def plain():
            log.info("a.started bind=%s:%d tls=%s", host, port, tls)

        def chosen(ok):
            event = "b.ok" if ok else "b.failed"
            log.log(logging.INFO if ok else logging.WARNING, "%s peer=%s", event, peer)

        def refuse(what, status, level=logging.ERROR):
            log.log(level, "%s.failed status=0x%04X reason=%r", what, status, reason)

        refuse("move", 1)
        refuse(what="get", status=2)
    """
    assert _calls(source) == [
        (("a.started",), ("INFO",), ("bind", "tls")),
        (("b.ok",), ("INFO",), ("peer",)),
        (("b.failed",), ("WARNING",), ("peer",)),
        (("move.failed", "get.failed"), ("ERROR", CALLER), ("status", "reason")),
    ]


@pytest.mark.parametrize(
    "source",
    [
        'def f(x):\n    log.info("%s key=%s", x, 1)\n',  # x: no caller passes a constant
        'log.info(f"a.b key={x}")\n',
        'log.log(level, "a.b key=%s", x)\n',
        'log.warning("Something went wrong")\n',
    ],
)
def test_the_extractor_refuses_what_it_cannot_read(source: str) -> None:
    with pytest.raises(ExtractionError, match=r"m\.py:\d+"):
        calls_in(source, "m.py")

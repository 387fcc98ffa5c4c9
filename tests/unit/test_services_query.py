"""C-FIND through the query service (`services/query.py`) on the in-memory network: one and
fan-out, merged and de-duplicated results, failures, timeouts, refusals and C-CANCEL."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from dicomlb.dicom.dimse import CommandField, Status, Tag
from dicomlb.dicom.pdu import AssociateReject, RejectResult, RejectSource
from dicomlb.dicom.qr import identifier_values
from dicomlb.dicom.tags import STUDY_INSTANCE_UID
from tests.unit.fakenet import FakeSCP, Message, Network, ignore, settle
from tests.unit.fakeservices import (
    FIND_CTX,
    STUDY_ROOT_FIND,
    Site,
    cancel,
    request,
    site_config,
    study_query,
)
from tests.unit.helpers import IMPLICIT_VR_LE
from tests.unit.shells import run

PENDING = 0xFF00


def finder(*studies: str, status: int = Status.SUCCESS, comment: str | None = None) -> Any:
    """A handler answering a C-FIND with one pending result per study, then `status`."""

    def handle(scp: FakeSCP, message: Message) -> None:
        if message.command.command_field != CommandField.C_FIND_RQ:
            return
        for study in studies:
            scp.respond(message, PENDING, study_query(study))
        scp.respond(message, status, comment=comment)

    return handle


def studies_of(messages: list[Message]) -> list[str]:
    return [
        identifier_values(m.data, IMPLICIT_VR_LE)[STUDY_INSTANCE_UID]
        for m in messages
        if m.data is not None
    ]


def serve(network: Network, n: int, handler: Any, **scp: Any) -> None:
    network.serve(f"10.0.0.{n}", 104, lambda: FakeSCP(handler=handler, **scp))


async def find(site: Site, identifier: bytes | None = None, message_id: int = 7) -> list[Message]:
    client = await site.client()
    client.send(
        FIND_CTX,
        request(CommandField.C_FIND_RQ, STUDY_ROOT_FIND, message_id),
        identifier if identifier is not None else study_query(),
    )
    answers = await site.responses(client)
    client.release()
    await client.closed
    await settle()
    return answers


def test_one_relays_one_backends_results_in_order_with_the_clients_message_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def test() -> None:
        network = Network()
        serve(network, 1, finder("1.2.3", "1.2.4"))
        serve(network, 2, finder("9.9.9"))
        site = Site(site_config(["pacs1"], query="one"), network)
        with caplog.at_level(logging.INFO):
            answers = await find(site, message_id=42)
        assert [m.command.status for m in answers] == [PENDING, PENDING, Status.SUCCESS]
        assert {m.command.responded_to for m in answers} == {42}
        assert studies_of(answers) == ["1.2.3", "1.2.4"]
        assert "find.relayed route=all pool=pacs backend=pacs1 mode=one" in caplog.text
        assert "results=2 status=0x0000" in caplog.text
        assert site.held() == {"pacs1": 0}

    run(test)


def test_fanout_merges_without_duplicates_and_records_where_studies_are(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def test() -> None:
        network = Network()
        serve(network, 1, finder("1.1", "2.2"))
        serve(network, 2, finder("2.2", "3.3"))
        site = Site(site_config(query="fanout"), network)
        with caplog.at_level(logging.INFO):
            answers = await find(site)
        assert sorted(studies_of(answers)) == ["1.1", "2.2", "3.3"]
        assert answers[-1].command.status == Status.SUCCESS
        assert answers[-1].command.error_comment is None
        assert "mode=fanout backends=2 failed=0" in caplog.text
        assert "results=3 duplicates=1" in caplog.text
        studies = site.runtime.studies
        assert studies.locate("1.1") == ["pacs1"]
        assert sorted(studies.locate("2.2")) == ["pacs1", "pacs2"]
        assert site.held() == {"pacs1": 0, "pacs2": 0}

    run(test)


def test_fanout_with_a_backend_unreachable_is_partial() -> None:
    async def test() -> None:
        network = Network()
        serve(network, 1, finder("1.1"))  # pacs2 refuses connections
        site = Site(site_config(query="fanout"), network)
        answers = await find(site)
        assert studies_of(answers) == ["1.1"]
        final = answers[-1].command
        assert final.status == Status.SUCCESS
        assert final.error_comment == "partial: no answer from pacs2 (unreachable)"

    run(test)


def test_fanout_timeout_leaves_the_slow_backend_out_and_up() -> None:
    async def test() -> None:
        network = Network()
        serve(network, 1, finder("1.1"))
        serve(network, 2, ignore)
        site = Site(site_config(query="fanout", query_timeout="50ms"), network)
        answers = await find(site)
        assert studies_of(answers) == ["1.1"]
        assert answers[-1].command.error_comment == "partial: no answer from pacs2 (timed out)"
        assert site.runtime.backends["pacs2"].health.up  # a slow query is no failure
        assert site.held() == {"pacs1": 0, "pacs2": 0}
        assert network.scps[-1].aborted  # the unanswered association is not reused

    run(test)


def test_fanout_none_answers_gives_the_common_refusal() -> None:
    async def test() -> None:
        network = Network()
        reject = AssociateReject(
            result=RejectResult.PERMANENT, source=RejectSource.SERVICE_USER, reason=3
        )  # calling AE not recognized
        for n in (1, 2):
            serve(network, n, finder(), reject=reject)
        site = Site(site_config(query="fanout"), network)
        answers = await find(site)
        assert len(answers) == 1
        final = answers[0].command
        assert final.status != Status.SUCCESS
        assert final.error_comment is not None
        assert "pacs1" in final.error_comment and "pacs2" in final.error_comment

    run(test)


def test_fanout_backend_failure_status_is_reported_in_the_comment() -> None:
    async def test() -> None:
        network = Network()
        serve(network, 1, finder("1.1"))
        serve(network, 2, finder(status=0xC001, comment="bad key"))
        site = Site(site_config(query="fanout"), network)
        answers = await find(site)
        final = answers[-1].command
        assert final.status == Status.SUCCESS
        assert final.error_comment == "partial: no answer from pacs2 (status 0xC001 bad key)"

    run(test)


def test_fanout_with_no_healthy_backend_is_out_of_resources() -> None:
    async def test() -> None:
        network = Network()
        site = Site(site_config(query="fanout"), network)
        client = await site.client()
        for state in site.runtime.backends.values():
            state.enabled = False
        dialed = len(network.dialed)
        client.send(FIND_CTX, request(CommandField.C_FIND_RQ, STUDY_ROOT_FIND, 3), study_query())
        (final,) = await site.responses(client)
        assert final.command.status == Status.OUT_OF_RESOURCES
        assert final.command.error_comment == "no healthy backend in pool pacs"
        assert len(network.dialed) == dialed  # nobody asked

    run(test)


def test_one_with_every_backend_unreachable_is_out_of_resources(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def test() -> None:
        site = Site(site_config(query="one"), Network())
        client = await site.client()
        client.send(FIND_CTX, request(CommandField.C_FIND_RQ, STUDY_ROOT_FIND, 3), study_query())
        (final,) = await site.responses(client)
        assert final.command.status == Status.OUT_OF_RESOURCES
        assert (final.command.error_comment or "").startswith("no healthy backend in pool pacs")
        for name in ("pacs1", "pacs2"):  # each tried once, each told to passive health
            assert f"backend.unreachable backend={name} pool=pacs cause=refused" in caplog.text

    run(test)


def test_one_response_timeout_fails_the_find(caplog: pytest.LogCaptureFixture) -> None:
    async def test() -> None:
        network = Network()
        serve(network, 1, ignore)
        site = Site(site_config(["pacs1"], query="one", response_timeout="50ms"), network)
        answers = await find(site)
        final = answers[-1].command
        assert final.status == Status.PROCESSING_FAILURE
        assert final.error_comment == "pacs1: no response within 0.05s"
        assert site.held() == {"pacs1": 0}

    run(test)


def test_one_backend_aborting_mid_results_keeps_what_was_relayed() -> None:
    def handle(scp: FakeSCP, message: Message) -> None:
        if message.command.command_field == CommandField.C_FIND_RQ:
            scp.respond(message, PENDING, study_query("1.1"))
            scp.abort()

    async def test() -> None:
        network = Network()
        serve(network, 1, handle)
        site = Site(site_config(["pacs1"], query="one"), network)
        answers = await find(site)
        assert studies_of(answers) == ["1.1"]
        final = answers[-1].command
        assert final.status == Status.PROCESSING_FAILURE
        assert (final.error_comment or "").startswith("pacs1: aborted by the backend")
        assert site.held() == {"pacs1": 0}

    run(test)


def test_no_route_refuses_the_find() -> None:
    async def test() -> None:
        config = site_config(query="one")
        config["routes"] = [{"name": "stores", "pool": "pacs", "match": {"command": "C-STORE"}}]
        site = Site(config, Network())
        client = await site.client()
        client.send(FIND_CTX, request(CommandField.C_FIND_RQ, STUDY_ROOT_FIND, 3), study_query())
        (final,) = await site.responses(client)
        assert final.command.status == Status.NOT_AUTHORIZED
        assert final.command.error_comment == "no route matches this C-FIND"

    run(test)


def test_cancel_reaches_every_backend_asked() -> None:
    def slow(scp: FakeSCP, message: Message) -> None:
        if message.command.command_field == CommandField.C_FIND_RQ:
            scp.respond(message, PENDING, study_query(f"1.{len(scp.messages)}"))
        elif message.command.command_field == CommandField.C_CANCEL_RQ:
            find_rq = scp.messages[0]
            assert message.command.responded_to == find_rq.command.message_id
            scp.respond(find_rq, 0xFE00)

    async def test() -> None:
        network = Network()
        serve(network, 1, slow)
        serve(network, 2, slow)
        site = Site(site_config(query="fanout"), network)
        client = await site.client()
        client.send(FIND_CTX, request(CommandField.C_FIND_RQ, STUDY_ROOT_FIND, 9), study_query())
        first = await client.next_message()
        assert first.command.status == PENDING
        client.send(FIND_CTX, cancel(9))
        answers = [first, *await site.responses(client)]
        assert answers[-1].command.status == 0xFE00
        cancels = [
            m
            for scp in network.scps
            for m in scp.messages
            if m.command.command_field == CommandField.C_CANCEL_RQ
        ]
        assert len(cancels) == 2
        assert site.held() == {"pacs1": 0, "pacs2": 0}

    run(test)


def test_cancel_for_another_message_is_ignored() -> None:
    def handle(scp: FakeSCP, message: Message) -> None:
        if message.command.command_field == CommandField.C_FIND_RQ:
            scp.respond(message, PENDING, study_query("1.1"))
        elif message.command.command_field == CommandField.C_CANCEL_RQ:
            raise AssertionError("a cancel for another message reached the backend")

    async def test() -> None:
        network = Network()
        serve(network, 1, handle)
        site = Site(site_config(["pacs1"], query="one", response_timeout="100ms"), network)
        client = await site.client()
        client.send(FIND_CTX, request(CommandField.C_FIND_RQ, STUDY_ROOT_FIND, 9), study_query())
        await client.next_message()
        client.send(FIND_CTX, cancel(8))
        answers = await site.responses(client)
        assert answers[-1].command.status == Status.PROCESSING_FAILURE  # timed out, not cancelled

    run(test)


def test_identifier_values_reach_the_backend_unchanged() -> None:
    async def test() -> None:
        network = Network()
        serve(network, 1, finder())
        site = Site(site_config(["pacs1"], query="one"), network)
        identifier = study_query("1.2.3", PatientID="P1")
        await find(site, identifier)
        (find_rq,) = [
            m
            for scp in network.scps
            for m in scp.messages
            if m.command.command_field == CommandField.C_FIND_RQ
        ]
        assert find_rq.data == identifier
        assert find_rq.command.text(Tag.AFFECTED_SOP_CLASS_UID) == STUDY_ROOT_FIND

    run(test)

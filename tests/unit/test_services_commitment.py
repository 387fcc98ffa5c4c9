"""Storage commitment through the commitment service (`services/commitment.py`) on the
in-memory network: the N-ACTION to the backend holding the instances (spread, unlocated,
holder down), the N-EVENT-REPORT relayed to the requester or to a backend, and what is
refused."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from dicomlb.dicom.dimse import CommandField, Status, Tag, response
from dicomlb.dicom.pdu import RoleSelection
from dicomlb.dicom.qr import commitment_request
from dicomlb.services import commitment
from tests.unit.fakenet import FakeSCP, Message, Network, settle
from tests.unit.fakeservices import (
    COMMIT_CTX,
    CT,
    CT_CTX,
    STORAGE_COMMITMENT,
    Site,
    commitment_data,
    n_action,
    n_event_report,
    site_config,
)
from tests.unit.helpers import IMPLICIT_VR_LE
from tests.unit.shells import run

TRANSACTION = "2.25.1234"


def serve(network: Network, n: int, handler: Any = None, **scp: Any) -> None:
    network.serve(f"10.0.0.{n}", 104, lambda: FakeSCP(ae_title=f"PACS{n}", handler=handler, **scp))


def forward_config(names: tuple[str, ...] = ("pacs1", "pacs2"), **pool: Any) -> dict[str, Any]:
    return site_config(names, storage_commitment="forward", **pool)


def actions(network: Network) -> list[tuple[FakeSCP, Message]]:
    return [
        (scp, m)
        for scp in network.scps
        for m in scp.messages
        if m.command.command_field == CommandField.N_ACTION_RQ
    ]


async def commit(site: Site, instances: list[str], transaction: str = TRANSACTION) -> Message:
    client = await site.client("COMMITSCU")
    client.send(COMMIT_CTX, n_action(21), commitment_data(transaction, instances))
    answer = await client.next_message()
    client.release()
    await client.closed
    await settle()
    return answer


def test_request_goes_to_the_holder_and_is_registered(caplog: pytest.LogCaptureFixture) -> None:
    async def test() -> None:
        network = Network()
        serve(network, 1)
        serve(network, 2)
        site = Site(forward_config(), network)
        site.runtime.studies.record("1.2.3", "pacs2", "1.2.3.1")
        site.runtime.studies.record("1.2.3", "pacs2", "1.2.3.2")
        with caplog.at_level(logging.INFO):
            answer = await commit(site, ["1.2.3.1", "1.2.3.2"])
        assert answer.command.status == Status.SUCCESS
        assert answer.command.responded_to == 21
        ((scp, action),) = actions(network)
        assert scp.ae_title == "PACS2"
        assert scp.request is not None and scp.request.calling_ae == "COMMITSCU"
        assert action.data is not None
        assert commitment_request(action.data, IMPLICIT_VR_LE).instances == ("1.2.3.1", "1.2.3.2")
        pending = site.runtime.commitments.take(TRANSACTION)
        assert pending is not None
        assert (pending.requester_ae, pending.backend) == ("COMMITSCU", "pacs2")
        assert "commitment.forwarded pool=pacs backend=pacs2 transaction=2.25.1234" in caplog.text
        assert "instances=2 located=2 status=0x0000" in caplog.text
        assert site.held() == {"pacs1": 0, "pacs2": 0}

    run(test)


def test_spread_instances_go_to_the_backend_holding_most(caplog: pytest.LogCaptureFixture) -> None:
    async def test() -> None:
        network = Network()
        serve(network, 1)
        serve(network, 2)
        site = Site(forward_config(), network)
        site.runtime.studies.record("1.2.3", "pacs1", "1.1")
        site.runtime.studies.record("1.2.3", "pacs2", "2.1")
        site.runtime.studies.record("1.2.3", "pacs2", "2.2")
        answer = await commit(site, ["1.1", "2.1", "2.2"])
        assert answer.command.status == Status.SUCCESS
        assert [scp.ae_title for scp, _ in actions(network)] == ["PACS2"]
        assert "commitment.spread transaction=2.25.1234 instances=3" in caplog.text
        assert "backends=pacs1:1,pacs2:2 chosen=pacs2" in caplog.text

    run(test)


def test_unlocated_request_goes_where_the_strategy_picks(caplog: pytest.LogCaptureFixture) -> None:
    async def test() -> None:
        network = Network()
        serve(network, 1)
        site = Site(forward_config(("pacs1",)), network)
        with caplog.at_level(logging.INFO):
            answer = await commit(site, ["9.9"])
        assert answer.command.status == Status.SUCCESS
        assert len(actions(network)) == 1
        assert "commitment.unlocated pool=pacs" in caplog.text
        assert "located=0" in caplog.text

    run(test)


def test_holder_unreachable_falls_back_to_another_backend(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def test() -> None:
        network = Network()
        serve(network, 1)  # pacs2, the holder, refuses connections
        site = Site(forward_config(), network)
        site.runtime.studies.record("1.2.3", "pacs2", "2.1")
        answer = await commit(site, ["2.1"])
        assert answer.command.status == Status.SUCCESS
        assert [scp.ae_title for scp, _ in actions(network)] == ["PACS1"]
        assert "backend.unreachable backend=pacs2 pool=pacs" in caplog.text
        assert site.runtime.commitments.take(TRANSACTION) is not None

    run(test)


def test_no_backend_reachable_fails_and_forgets_the_transaction() -> None:
    async def test() -> None:
        site = Site(forward_config(), Network())
        answer = await commit(site, ["2.1"])
        assert answer.command.status == Status.OUT_OF_RESOURCES
        assert len(site.runtime.commitments) == 0

    run(test)


def test_backend_failure_status_is_relayed_and_no_report_awaited() -> None:
    def refuse(scp: FakeSCP, message: Message) -> None:
        scp.respond(message, 0x0110, comment="cannot commit")

    async def test() -> None:
        network = Network()
        serve(network, 1, refuse)
        site = Site(forward_config(("pacs1",)), network)
        answer = await commit(site, ["2.1"])
        assert answer.command.status == 0x0110
        assert answer.command.error_comment == "cannot commit"
        assert len(site.runtime.commitments) == 0

    run(test)


def test_unreadable_action_information_is_refused() -> None:
    async def test() -> None:
        network = Network()
        serve(network, 1)
        site = Site(forward_config(("pacs1",)), network)
        client = await site.client("COMMITSCU")
        client.send(COMMIT_CTX, n_action(3), commitment_data("", ["1.1"]))
        answer = await client.next_message()
        assert answer.command.status == Status.PROCESSING_FAILURE
        assert answer.command.error_comment == "storage commitment data set without Transaction UID"
        assert actions(network) == []

    run(test)


def test_pool_without_forwarding_refuses() -> None:
    async def test() -> None:
        config = forward_config()
        config["pools"]["plain"] = {
            "health": {"enabled": False},
            "backends": [{"name": "pacs9", "dicom": "PACS9@10.0.0.9:104"}],
        }
        config["routes"].insert(
            0, {"name": "commits", "pool": "plain", "match": {"command": "N-ACTION"}}
        )
        network = Network()
        site = Site(config, network)
        answer = await commit(site, ["1.1"])
        assert answer.command.status == Status.NO_SUCH_SOP_CLASS
        assert answer.command.error_comment == "pool plain does not take storage commitment"
        assert actions(network) == []

    run(test)


def test_n_action_of_another_sop_class_is_refused() -> None:
    async def test() -> None:
        site = Site(forward_config(), Network())
        client = await site.client("COMMITSCU")
        action = n_action(3).replace({Tag.REQUESTED_SOP_CLASS_UID: CT})
        client.send(CT_CTX, action, commitment_data(TRANSACTION, ["1.1"]))
        answer = await client.next_message()
        assert answer.command.status == Status.NO_SUCH_SOP_CLASS

    run(test)


def test_request_without_a_route_is_refused() -> None:
    async def test() -> None:
        config = forward_config()
        config["routes"] = [{"name": "stores", "pool": "pacs", "match": {"command": "C-STORE"}}]
        site = Site(config, Network())
        answer = await commit(site, ["1.1"])
        assert answer.command.status == Status.NOT_AUTHORIZED
        assert answer.command.error_comment == "no route matches this N-ACTION"

    run(test)


# ------------------------------------------------------------------ N-EVENT-REPORT


def requester(status: int = Status.SUCCESS) -> Any:
    def handle(scp: FakeSCP, message: Message) -> None:
        if message.command.command_field == CommandField.N_EVENT_REPORT_RQ:
            scp.send(message.context_id, response(message.command, status))

    return handle


async def report(
    site: Site, reporter: str = "PACS1", called: str = "DICOMLB", data: bytes | None = None
) -> Message:
    """A backend's N-EVENT-REPORT-RQ through dicomlb; the response it gets."""
    client = await site.client(reporter, called)
    body = data if data is not None else commitment_data(TRANSACTION, ["1.1"])
    client.send(COMMIT_CTX, n_event_report(31, event_type=2), body)
    answer = await client.next_message()
    client.release()
    await client.closed
    await settle()
    return answer


def test_report_is_relayed_to_the_requester_as_the_reporter(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def test() -> None:
        network = Network()
        network.serve("10.0.0.60", 104, lambda: FakeSCP(ae_title="COMMITSCU", handler=requester()))
        site = Site(forward_config(), network)
        site.runtime.commitments.register(
            transaction_uid=TRANSACTION, requester_ae="COMMITSCU", backend="pacs1"
        )
        with caplog.at_level(logging.INFO):
            answer = await report(site)
        assert answer.command.status == Status.SUCCESS
        assert answer.command.responded_to == 31
        (scp,) = [s for s in network.scps if s.ae_title == "COMMITSCU"]
        assert scp.request is not None
        assert (scp.request.calling_ae, scp.request.called_ae) == ("PACS1", "COMMITSCU")
        assert scp.request.user_info.roles == (
            RoleSelection(sop_class_uid=STORAGE_COMMITMENT, scu_role=False, scp_role=True),
        )
        (relayed,) = scp.messages
        assert relayed.command.us(Tag.EVENT_TYPE_ID) == 2
        assert relayed.data == commitment_data(TRANSACTION, ["1.1"])
        assert scp.released
        assert len(site.runtime.commitments) == 0
        assert "commitment.reported transaction=2.25.1234 reporter_aet=PACS1" in caplog.text
        assert "requester=COMMITSCU address=COMMITSCU@10.0.0.60:104 backend=-" in caplog.text
        assert "event_type=2 status=0x0000" in caplog.text

    run(test)


def test_report_for_a_backends_own_request_goes_to_that_backend() -> None:
    """Not forwarded by dicomlb: the committer calls the backend's AE title."""

    async def test() -> None:
        network = Network()
        serve(network, 2, requester(0x0110))
        site = Site(forward_config(), network)
        answer = await report(site, reporter="COMMITTER", called="PACS2")
        assert answer.command.status == 0x0110
        (scp,) = [s for s in network.scps if s.messages]
        assert scp.ae_title == "PACS2"
        assert scp.request is not None and scp.request.calling_ae == "COMMITTER"

    run(test)


def test_report_to_an_ambiguous_backend_ae_title_picks_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def test() -> None:
        network = Network()
        serve(network, 1, requester())
        config = forward_config()
        config["pools"]["pacs"]["backends"][1]["dicom"] = "PACS1@10.0.0.2:104"
        site = Site(config, network)
        answer = await report(site, reporter="COMMITTER", called="PACS1")
        assert answer.command.status == Status.SUCCESS
        assert "commitment.ambiguous_requester requester=PACS1 backends=pacs1,pacs2" in (
            caplog.text
        )

    run(test)


def test_report_for_an_unknown_requester_fails() -> None:
    async def test() -> None:
        site = Site(forward_config(), Network())
        answer = await report(site, called="NOBODY")
        assert answer.command.status == Status.PROCESSING_FAILURE
        assert (answer.command.error_comment or "").startswith(
            "storage commitment requester NOBODY is neither"
        )

    run(test)


def test_report_of_a_registered_requester_not_in_dicom_nodes_fails() -> None:
    async def test() -> None:
        site = Site(forward_config(), Network())
        site.runtime.commitments.register(
            transaction_uid=TRANSACTION, requester_ae="PACS2", backend="pacs1"
        )
        answer = await report(site, called="PACS2")  # a client's: never a backend's
        assert answer.command.status == Status.PROCESSING_FAILURE

    run(test)


def test_report_to_an_unreachable_requester_fails() -> None:
    async def test() -> None:
        site = Site(forward_config(), Network())
        answer = await report(site, called="COMMITSCU")
        assert answer.command.status == Status.PROCESSING_FAILURE
        assert (answer.command.error_comment or "").startswith("COMMITSCU: ")

    run(test)


def test_report_refused_by_the_requesters_context_fails() -> None:
    async def test() -> None:
        network = Network()
        network.serve("10.0.0.60", 104, lambda: FakeSCP(ae_title="COMMITSCU", contexts={}))
        site = Site(forward_config(), network)
        answer = await report(site, called="COMMITSCU")
        assert answer.command.status == Status.PROCESSING_FAILURE
        assert "COMMITSCU refused storage commitment" in (answer.command.error_comment or "")
        (scp,) = [s for s in network.scps if s.ae_title == "COMMITSCU"]
        await scp.closed  # aborted, not left open

    run(test)


def test_unreadable_report_and_other_sop_class_are_refused() -> None:
    async def test() -> None:
        site = Site(forward_config(), Network())
        answer = await report(site, called="COMMITSCU", data=commitment_data("", []))
        assert answer.command.status == Status.PROCESSING_FAILURE
        client = await site.client("PACS1")
        client.send(CT_CTX, n_event_report(4, sop_class=CT), commitment_data(TRANSACTION, []))
        answer = await client.next_message()
        assert answer.command.status == Status.NO_SUCH_SOP_CLASS
        assert answer.command.error_comment == "dicomlb relays storage commitment reports only"

    run(test)


def test_report_to_a_requester_that_never_answers_says_it_timed_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def test() -> None:
        network = Network()
        network.hang("10.0.0.60", 104)
        site = Site(forward_config(), network)
        answer = await report(site, called="COMMITSCU")
        assert answer.command.status == Status.PROCESSING_FAILURE
        assert answer.command.error_comment == "COMMITSCU: timed out"

    monkeypatch.setattr(commitment, "_CONNECT_TIMEOUT", 0.05)
    run(test)


def test_unlocated_instances_are_found_by_asking_the_backends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Stored through another dicomlb instance: a C-FIND at IMAGE level finds the holder."""

    def holder(uids: list[str]) -> Any:
        def handle(scp: FakeSCP, message: Message) -> None:
            if message.command.command_field == CommandField.C_FIND_RQ:
                for _ in uids:
                    scp.respond(message, 0xFF00, commitment_data(TRANSACTION, []))
            scp.respond(message, Status.SUCCESS)

        return handle

    async def test() -> None:
        network = Network()
        serve(network, 1, holder([]))
        serve(network, 2, holder(["2.1", "2.2"]))
        site = Site(forward_config(), network)
        with caplog.at_level(logging.INFO):
            answer = await commit(site, ["2.1", "2.2"])
        assert answer.command.status == Status.SUCCESS
        assert [scp.ae_title for scp, _ in actions(network)] == ["PACS2"]
        assert "commitment.probed pool=pacs transaction=2.25.1234 instances=2" in caplog.text
        assert "found=pacs2:2" in caplog.text

    run(test)

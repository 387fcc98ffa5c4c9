"""The relay and its services (`services/relay.py`, `session.py`, `echo.py`, `store.py`)
through the listener, over the in-memory network: what the client is answered, what the
backend receives, which backend is tried next, and each image's fate in the log."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import pytest

from dicomlb.bridge.client import BridgeInstance, HttpStoreClient
from dicomlb.bridge.core import StoreOutcome
from dicomlb.dicom.dimse import CommandField, Status, Tag, echo_request
from dicomlb.dicom.pdu import Abort, AssociateReject, RejectResult, RejectSource
from dicomlb.http.budget import ConnectionBudget
from dicomlb.services import relay
from dicomlb.services.session import placement_refusal
from tests.unit.fakenet import FakeSCP, Message, answer, ignore
from tests.unit.helpers import (
    CT_IMAGE_STORAGE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    MR_IMAGE_STORAGE,
    VERIFICATION,
    make_request,
)
from tests.unit.shells import BACKEND_HOSTS, Front, backend, config, instance, run, store_request

ECHO_ONLY = make_request(contexts=((1, VERIFICATION, (IMPLICIT_VR_LE,)),))
CT_AND_MR = make_request(
    contexts=(
        (1, CT_IMAGE_STORAGE, (EXPLICIT_VR_LE,)),
        (3, MR_IMAGE_STORAGE, (EXPLICIT_VR_LE,)),
        (5, VERIFICATION, (IMPLICIT_VR_LE,)),
    )
)


def serve(front: Front, name: str, **scp: Any) -> None:
    front.network.serve(*BACKEND_HOSTS[name], lambda: FakeSCP(ae_title=name.upper(), **scp))


async def store(front: Front, data: bytes | None = None, **request: Any) -> Message:
    """One C-STORE from a new client association; the answer it got."""
    client = await front.associate()
    client.send(1, store_request(**request), instance() if data is None else data)
    answer = await client.next_message()
    client.release()
    await client.closed
    return answer


# ------------------------------------------------------------ relay


def test_requests_that_cannot_be_relayed_are_refused_and_the_association_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def test() -> None:
        front = Front(config(backend("a")))
        serve(front, "a")
        client = await front.associate(CT_AND_MR)
        # a C-STORE without its data set
        no_data = store_request(1).replace({Tag.COMMAND_DATA_SET_TYPE: 0x0101})
        client.send(1, no_data)
        # an MR instance on the CT context
        client.send(1, store_request(2, sop_class=MR_IMAGE_STORAGE), instance())
        # a service dicomlb does not relay (N-GET)
        n_get = echo_request(3).replace({Tag.COMMAND_FIELD: CommandField.N_GET_RQ})
        client.send(5, n_get.replace({Tag.AFFECTED_SOP_CLASS_UID: VERIFICATION}))
        client.send(5, echo_request(4))
        answers = [await client.next_message() for _ in range(4)]
        assert [(a.command.responded_to, a.command.status) for a in answers] == [
            (1, Status.CANNOT_UNDERSTAND),
            (2, Status.SOP_CLASS_NOT_SUPPORTED),
            (3, Status.UNRECOGNIZED_OPERATION),
            (4, Status.SUCCESS),
        ]
        assert answers[2].command.error_comment == "dicomlb does not relay N-GET"
        assert not any(scp.messages for scp in front.network.scps)  # none reached a backend

    run(test)
    assert "dimse.refused peer=10.0.0.5:50000 calling_aet=STORESCU command=C-STORE" in caplog.text
    assert "status=0xC000 reason='C-STORE without a data set'" in caplog.text


def test_whether_some_route_can_take_a_message() -> None:
    async def test() -> None:
        front = Front(config(backend("a")))
        relay = front.relay
        assert relay.any_route_available(front.runtime)
        front.runtime.backends["a"].enabled = False
        assert not relay.any_route_available(front.runtime)
        assert relay.no_route_reason(front.runtime) == "no healthy backend in any pool a route uses"

    run(test)


# ------------------------------------------------------------ echo


def test_echo_is_relayed_to_the_echo_pool(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)

    async def test() -> None:
        front = Front(config(backend("a"), listener={"echo": "p"}))
        serve(front, "a")
        client = await front.associate(ECHO_ONLY)
        client.send(1, echo_request(11))
        reply = await client.next_message()
        assert reply.command.status == Status.SUCCESS and reply.command.responded_to == 11
        relayed = front.network.scps[-1].messages[-1].command
        assert relayed.command_field == CommandField.C_ECHO_RQ

    run(test)
    assert "echo.relayed pool=p backend=a status=0x0000" in caplog.text


def test_echo_to_an_echo_pool_nobody_answers_fails_with_the_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def test() -> None:
        front = Front(config(backend("a"), listener={"echo": "p"}))  # nothing served at a
        client = await front.associate(ECHO_ONLY)
        client.send(1, echo_request(1))
        reply = await client.next_message()
        assert reply.command.status == Status.OUT_OF_RESOURCES
        assert (reply.command.error_comment or "").startswith("no healthy backend in pool p")

    run(test)
    assert "echo.failed pool=p" in caplog.text
    assert "backend.unreachable backend=a pool=p cause=refused" in caplog.text


def test_a_defect_in_a_service_aborts_its_association_with_one_log_line(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(session: Any, message: Any) -> None:
        raise KeyError("a defect")

    monkeypatch.setitem(relay.HANDLERS, CommandField.C_ECHO_RQ, broken)

    async def test() -> None:
        front = Front(config(backend("a"), listener={"echo": "p"}))
        serve(front, "a")
        client = await front.associate(ECHO_ONLY)
        client.send(1, echo_request(1))
        assert isinstance(await client.next(), Abort)

    run(test)
    assert "relay.failed peer=" in caplog.text
    assert "error=\"KeyError: 'a defect'\"" in caplog.text


# ------------------------------------------------------------ store, session


def test_an_instance_is_stored_byte_for_byte_and_its_fate_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)

    async def test() -> None:
        front = Front(config(backend("a")))
        serve(front, "a")
        reply = await store(front, instance="1.2.3.4.5")
        assert reply.command.status == Status.SUCCESS
        assert reply.command.command_field == CommandField.C_STORE_RSP
        relayed = front.network.scps[-1].messages[-1]
        assert relayed.data == instance() and relayed.command.sop_instance_uid == "1.2.3.4.5"
        assert front.runtime.backends["a"].active == 0

    run(test)
    for event in ("store.received", "store.routed", "store.delivered"):
        assert event in caplog.text, event


def test_a_backend_that_cannot_be_reached_is_passed_over_for_the_next(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def test() -> None:
        front = Front(config(backend("a"), backend("b"), strategy="round_robin"))
        serve(front, "b")  # a refuses connections
        for n in range(2):
            reply = await store(front, message_id=n + 1)
            assert reply.command.status == Status.SUCCESS
        assert len(front.network.scps[-1].messages) >= 1
        assert all(scp.ae_title == "B" for scp in front.network.scps)

    run(test)
    assert "backend.unreachable backend=a pool=p cause=refused" in caplog.text


def test_a_permanent_rejection_is_not_authorized_at_once() -> None:
    async def test() -> None:
        front = Front(config(backend("a"), backend("b")))
        rejection = AssociateReject(
            result=RejectResult.PERMANENT, source=RejectSource.SERVICE_USER, reason=3
        )
        serve(front, "a", reject=rejection)
        serve(front, "b", reject=rejection)
        client = await front.associate()
        asked = len(front.network.dialed)
        client.send(1, store_request(), instance())
        reply = await client.next_message()
        assert reply.command.status == Status.NOT_AUTHORIZED
        assert "association rejected (result 1" in (reply.command.error_comment or "")
        assert len(front.network.dialed) == asked + 1  # refused here: not tried elsewhere

    run(test)


def test_backends_refusing_the_sop_class_make_it_not_supported() -> None:
    async def test() -> None:
        front = Front(config(backend("a")))
        # It took CT when asked at association time, and refuses it now (reconfigured).
        scps = iter([FakeSCP(), FakeSCP(contexts={VERIFICATION: [IMPLICIT_VR_LE]})])
        front.network.serve(*BACKEND_HOSTS["a"], lambda: next(scps))
        reply = await store(front)
        assert reply.command.status == Status.SOP_CLASS_NOT_SUPPORTED
        assert "no backend of pool p accepts it" in (reply.command.error_comment or "")

    run(test)


def test_a_backend_failing_the_instance_gets_its_name_in_the_answer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def test() -> None:
        front = Front(config(backend("a")))
        serve(front, "a", handler=lambda scp, message: scp.abort())
        reply = await store(front)
        assert reply.command.status == Status.PROCESSING_FAILURE
        assert (reply.command.error_comment or "").startswith("a: aborted by the backend")
        assert front.runtime.upstreams["a"].open == 0

    run(test)
    assert "store.failed" in caplog.text


def test_the_backends_own_status_goes_back_to_the_client() -> None:
    async def test() -> None:
        front = Front(config(backend("a")))
        serve(front, "a", handler=answer(0xA700, "disk full"))
        reply = await store(front)
        assert reply.command.status == 0xA700
        assert reply.command.error_comment == "disk full"

    run(test)


def test_no_response_in_time_fails_the_instance_and_counts_against_the_backend(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def test() -> None:
        front = Front(config(backend("a"), response_timeout="50ms"))
        serve(front, "a", handler=ignore)
        reply = await store(front)
        assert reply.command.status == Status.PROCESSING_FAILURE
        assert "no response within 0.05s" in (reply.command.error_comment or "")
        assert front.runtime.backends["a"].health.failures == 1

    run(test)
    assert "store.failed sop_instance_uid=1.2.3.4.5 route=all pool=p backend=a status=0x0110" in (
        caplog.text
    )


def test_an_instance_no_route_matches_is_not_authorized(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def test() -> None:
        data = config(backend("a"))
        data["routes"] = [{"name": "mr", "match": {"Modality": "MR"}, "pool": "p"}]
        front = Front(data)
        serve(front, "a")
        reply = await store(front)
        assert reply.command.status == Status.NOT_AUTHORIZED
        assert reply.command.error_comment == "no route matches this instance"
        assert not any(scp.messages for scp in front.network.scps)

    run(test)
    assert "store.failed sop_instance_uid=1.2.3.4.5 route= pool= status=0x0124" in caplog.text


def test_routing_tags_past_the_scan_cap_refuse_the_instance() -> None:
    async def test() -> None:
        data = config(backend("a"))
        data["routes"] = [{"name": "ct", "match": {"Modality": "CT"}, "pool": "p"}]
        front = Front(data)
        serve(front, "a")
        big = (
            (0x0007).to_bytes(2, "little")
            + (0x1000).to_bytes(2, "little")
            + b"OB\x00\x00"
            + (1100 * 1024).to_bytes(4, "little")
            + bytes(1100 * 1024)
        )
        reply = await store(front, data=big)
        assert reply.command.status == Status.CANNOT_UNDERSTAND
        assert "routing tags not found within the scan limit: Modality" in (
            reply.command.error_comment or ""
        )

    run(test)


def test_a_spent_scan_budget_asks_the_client_to_retry_later() -> None:
    async def test() -> None:
        data = config(backend("a"))
        data["routes"] = [{"name": "ct", "match": {"Modality": "CT"}, "pool": "p"}]
        front = Front(data)
        serve(front, "a")
        budget = front.listener.scan_budget
        budget.held = front.runtime.snapshot.dicom.scan_budget  # others hold it all
        client = await front.associate()
        client.send_command(1, store_request())
        client.send_data(1, instance()[:20], is_last=False)  # the tags are further on
        client.send_data(1, instance()[20:], is_last=True)
        reply = await client.next_message()
        assert reply.command.status == Status.OUT_OF_RESOURCES
        assert "scan budget spent" in (reply.command.error_comment or "")
        assert not any(scp.messages for scp in front.network.scps)

    run(test)


class ScriptedBridge(HttpStoreClient):
    """A `store_via` backend's HTTP client answering from a script (no HTTP)."""

    def __init__(self, backend: Any, outcomes: list[StoreOutcome]) -> None:
        super().__init__(backend, ConnectionBudget())
        self.outcomes = outcomes
        self.bodies: list[bytes] = []

    async def send(
        self,
        instances: Sequence[BridgeInstance],
        *,
        connect_timeout: float,
        read_timeout: float,
        acquire_timeout: float,
    ) -> list[StoreOutcome]:
        outcome = self.outcomes.pop(0)
        if outcome.unreachable:  # no connection: nothing of the body was read
            return [outcome] * len(instances)
        for item in instances:
            if isinstance(item.body, bytes):
                self.bodies.append(item.body)
            else:
                self.bodies.append(b"".join([chunk async for chunk in item.body]))
        return [outcome] * len(instances)


def web(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "http": f"http://{BACKEND_HOSTS[name][0]}:8042",
        "store_via": "orthanc_rest",
    }


@pytest.mark.parametrize(
    ("outcomes", "status", "bodies"),
    [
        ([StoreOutcome(status=0)], Status.SUCCESS, 1),
        (
            [StoreOutcome(status=0xA700, comment="HTTP 507", backend_failed=True)],
            0xA700,
            1,
        ),
        (
            [
                StoreOutcome(
                    status=0xA700, comment="refused", backend_failed=True, unreachable=True
                ),
            ],
            Status.SUCCESS,  # the DICOM backend took it
            0,
        ),
    ],
)
def test_a_store_via_backend_gets_the_instance_over_http(
    outcomes: list[StoreOutcome], status: int, bodies: int
) -> None:
    async def test() -> None:
        front = Front(config(web("a"), backend("b"), strategy="round_robin"))
        serve(front, "b")
        bridge = ScriptedBridge(front.runtime.backends["a"].config, list(outcomes))
        front.runtime.upstreams["a"].bridge = bridge
        # round robin starts somewhere: send until the web backend has been tried
        reply = None
        for n in range(2):
            reply = await store(front, message_id=n + 1)
            if not bridge.outcomes:
                break
        assert reply is not None and reply.command.status == status
        assert len(bridge.bodies) == bodies
        for body in bridge.bodies:
            assert body.endswith(instance())  # a Part-10 file around the data set
        if not bodies:  # passed over for the DICOM backend
            assert front.network.scps[-1].messages[-1].data == instance()

    run(test)


def test_a_session_closing_releases_what_it_holds() -> None:
    async def test() -> None:
        front = Front(config(backend("a"), upstream="per_client"))
        serve(front, "a")
        client = await front.associate()
        client.send(1, store_request(), instance())
        await client.next_message()
        assert front.runtime.upstreams["a"].open == 1  # kept for this client
        client.release()
        await client.closed
        await asyncio.sleep(0.02)
        assert front.runtime.upstreams["a"].open == 0
        assert front.network.scps[-1].released

    run(test)


def test_placement_refusals_name_their_reason() -> None:
    http_only = placement_refusal("p", "C-FIND", True, [], [])
    assert http_only.status == Status.SOP_CLASS_NOT_SUPPORTED
    assert str(http_only) == "C-FIND not possible: pool p is http only"
    down = placement_refusal("p", "C-STORE", False, [], [])
    assert down.status == Status.OUT_OF_RESOURCES
    assert str(down) == "no healthy backend in pool p: every backend is down or disabled"

"""C-MOVE and C-GET through the retrieve service (`services/retrieve.py`) on the in-memory
network: the study located (table, probe, shared database), summed sub-operation counts,
failed-instance lists, the move destination relayed via the balancer, C-GET sub-operations
streamed both ways, failures, timeouts and refusals."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from dicomlb.dicom.dimse import Command, CommandField, Status, Tag, response
from dicomlb.dicom.qr import failed_instances, failed_list_identifier
from tests.unit.fakenet import FakeClient, FakeSCP, Message, Network, data_response, settle
from tests.unit.fakeservices import (
    CT,
    CT_CTX,
    GET_CTX,
    MOVE_CTX,
    STUDY_ROOT_FIND,
    STUDY_ROOT_GET,
    STUDY_ROOT_MOVE,
    Site,
    c_store,
    request,
    site_config,
    study_query,
)
from tests.unit.helpers import IMPLICIT_VR_LE, VERIFICATION
from tests.unit.shells import run

PENDING = 0xFF00
STUDY = "1.2.826.0.1.3680043.8.498.1"
COUNT_TAGS = (
    Tag.NUMBER_OF_REMAINING_SUBOPERATIONS,
    Tag.NUMBER_OF_COMPLETED_SUBOPERATIONS,
    Tag.NUMBER_OF_FAILED_SUBOPERATIONS,
    Tag.NUMBER_OF_WARNING_SUBOPERATIONS,
)


def counted(command: Command, *counts: int) -> Command:
    return command.replace(dict(zip(COUNT_TAGS, counts, strict=False)))


def counts_of(command: Command) -> tuple[int | None, ...]:
    return tuple(command.us(tag) for tag in COUNT_TAGS)


def mover(
    completed: int,
    *,
    failed: Sequence[str] = (),
    final: int | None = None,
) -> Any:
    """A C-MOVE / C-GET SCP: one pending response per completed instance, then the final
    response (with the Failed SOP Instance UID List when `failed`)."""

    def handle(scp: FakeSCP, message: Message) -> None:
        field = message.command.command_field
        if field == CommandField.C_FIND_RQ:
            scp.respond(message, PENDING, study_query(STUDY))
            scp.respond(message, Status.SUCCESS)
            return
        if field not in (CommandField.C_MOVE_RQ, CommandField.C_GET_RQ):
            return
        total = completed + len(failed)
        for done in range(1, completed + 1):
            scp.send(
                message.context_id,
                counted(reply(message, PENDING), total - done, done, 0, 0),
            )
        status = final if final is not None else (0xB000 if failed else Status.SUCCESS)
        if failed:
            answer = data_response(message.command, status)
            data = failed_list_identifier(failed, IMPLICIT_VR_LE)
        else:
            answer, data = reply(message, status), None
        scp.send(message.context_id, counted(answer, 0, completed, len(failed), 0), data)

    return handle


def reply(message: Message, status: int) -> Command:
    """The response to `message` with `status` (no data set)."""
    return response(message.command, status)


def serve(network: Network, n: int, handler: Any, **scp: Any) -> None:
    network.serve(f"10.0.0.{n}", 104, lambda: FakeSCP(ae_title=f"PACS{n}", handler=handler, **scp))


def requests_seen(network: Network, field: int) -> list[tuple[FakeSCP, Message]]:
    return [(s, m) for s in network.scps for m in s.messages if m.command.command_field == field]


async def move(
    site: Site, destination: str = "DEST", message_id: int = 5, *, disable: bool = False
) -> list[Message]:
    client = await site.client()
    if disable:  # after the association: with no backend it would be rejected
        for state in site.runtime.backends.values():
            state.enabled = False
    client.send(
        MOVE_CTX,
        request(CommandField.C_MOVE_RQ, STUDY_ROOT_MOVE, message_id, destination=destination),
        study_query(STUDY),
    )
    answers = await site.responses(client)
    client.release()
    await client.closed
    await settle()
    return answers


def test_move_goes_to_the_known_holders_and_sums_their_counts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def test() -> None:
        network = Network()
        for n in (1, 2, 3):
            serve(network, n, mover(2))
        site = Site(site_config(["pacs1", "pacs2", "pacs3"], query="fanout"), network)
        site.runtime.studies.record_many(STUDY, ["pacs1", "pacs3"])
        with caplog.at_level(logging.INFO):
            answers = await move(site)
        final = answers[-1].command
        assert final.status == Status.SUCCESS
        assert final.responded_to == 5
        assert counts_of(final) == (None, 4, 0, 0)  # PS3.4 C.4.2.1.5: no remaining in a final
        pendings = [m.command.us(Tag.NUMBER_OF_COMPLETED_SUBOPERATIONS) or 0 for m in answers[:-1]]
        assert sorted(pendings) == [1, 2, 3, 4]  # completed, summed as they came
        moved = requests_seen(network, CommandField.C_MOVE_RQ)
        assert sorted(s.ae_title for s, _ in moved) == ["PACS1", "PACS3"]
        assert {m.command.text(Tag.MOVE_DESTINATION) for _, m in moved} == {"DEST"}
        assert "retrieve.probed" not in caplog.text
        assert "move.relayed route=all pool=pacs backends=pacs1,pacs3" in caplog.text
        assert "mode=passthrough completed=4 failed=0" in caplog.text
        assert site.held() == {"pacs1": 0, "pacs2": 0, "pacs3": 0}

    run(test)


def test_move_of_an_unknown_study_probes_and_remembers(caplog: pytest.LogCaptureFixture) -> None:
    def nothing(scp: FakeSCP, message: Message) -> None:
        scp.respond(message, Status.SUCCESS)  # C-FIND: no match

    async def test() -> None:
        network = Network()
        serve(network, 1, nothing)
        serve(network, 2, mover(1))
        site = Site(site_config(query="fanout"), network)
        with caplog.at_level(logging.INFO):
            answers = await move(site)
        assert answers[-1].command.status == Status.SUCCESS
        assert "retrieve.probed pool=pacs backends=2 found=pacs2" in caplog.text
        assert site.runtime.studies.locate(STUDY) == ["pacs2"]
        finds = requests_seen(network, CommandField.C_FIND_RQ)
        assert {m.command.sop_class_uid for _, m in finds} == {STUDY_ROOT_FIND}
        assert [s.ae_title for s, _ in requests_seen(network, CommandField.C_MOVE_RQ)] == ["PACS2"]

    run(test)


def test_move_nobody_admits_to_lets_one_backend_answer(caplog: pytest.LogCaptureFixture) -> None:
    def nothing_then_fail(scp: FakeSCP, message: Message) -> None:
        if message.command.command_field == CommandField.C_FIND_RQ:
            scp.respond(message, Status.SUCCESS)
        else:
            scp.respond(message, 0xA701, comment="unknown study")

    async def test() -> None:
        network = Network()
        network.serve("10.0.0.1", 104, lambda: FakeSCP(handler=nothing_then_fail))
        site = Site(site_config(["pacs1", "pacs2"], query="fanout"), network)  # pacs2 down
        with caplog.at_level(logging.INFO):
            answers = await move(site)
        final = answers[-1].command
        assert final.status == 0xA701
        assert final.error_comment == "unknown study"
        assert "retrieve.probe_failed backend=pacs2" in caplog.text
        assert "found=-" in caplog.text

    run(test)


def test_move_with_a_shared_database_asks_one_backend() -> None:
    async def test() -> None:
        network = Network()
        for n in (1, 2):
            serve(network, n, mover(3))
        site = Site(site_config(query="one"), network)
        answers = await move(site)
        assert counts_of(answers[-1].command) == (None, 3, 0, 0)
        assert len(requests_seen(network, CommandField.C_MOVE_RQ)) == 1
        assert requests_seen(network, CommandField.C_FIND_RQ) == []

    run(test)


def test_failed_instances_of_a_spread_move_are_merged() -> None:
    async def test() -> None:
        network = Network()
        serve(network, 1, mover(1, failed=["1.1"]))
        serve(network, 2, mover(1, failed=["2.2"]))
        site = Site(site_config(query="fanout"), network)
        site.runtime.studies.record_many(STUDY, ["pacs1", "pacs2"])
        answers = await move(site)
        final = answers[-1]
        assert final.command.status == 0xB000
        assert counts_of(final.command) == (None, 2, 2, 0)
        assert final.data is not None
        assert sorted(failed_instances(final.data, IMPLICIT_VR_LE)) == ["1.1", "2.2"]

    run(test)


def test_move_with_one_holder_unreachable_is_partial(caplog: pytest.LogCaptureFixture) -> None:
    async def test() -> None:
        network = Network()
        serve(network, 1, mover(2))
        site = Site(site_config(query="fanout"), network)
        site.runtime.studies.record_many(STUDY, ["pacs1", "pacs2"])
        answers = await move(site)
        final = answers[-1].command
        assert counts_of(final)[1] == 2
        assert final.status != Status.SUCCESS
        assert final.error_comment == "partial: no answer from pacs2 (unreachable)"
        assert "retrieve.backend_failed backend=pacs2 cause=refused" in caplog.text

    run(test)


def test_move_backend_aborting_after_pending_counts_as_failed() -> None:
    def half(scp: FakeSCP, message: Message) -> None:
        if message.command.command_field == CommandField.C_MOVE_RQ:
            scp.send(message.context_id, counted(reply(message, PENDING), 1, 1, 0, 0))
            scp.abort()

    async def test() -> None:
        network = Network()
        serve(network, 1, half)
        site = Site(site_config(["pacs1"], query="one"), network)
        answers = await move(site)
        final = answers[-1].command
        assert final.status != Status.SUCCESS
        assert final.error_comment == "pacs1: failed"  # some sub-operations were done
        assert counts_of(final)[1] == 1
        assert site.held() == {"pacs1": 0}

    run(test)


def test_move_timeout_is_not_the_backends_failure() -> None:
    def silent(scp: FakeSCP, message: Message) -> None:
        pass

    async def test() -> None:
        network = Network()
        serve(network, 1, silent)
        site = Site(site_config(["pacs1"], query="one", response_timeout="50ms"), network)
        answers = await move(site)
        final = answers[-1].command
        assert final.status != Status.SUCCESS
        assert final.error_comment == "pacs1: timed out"
        assert site.runtime.backends["pacs1"].health.up
        assert site.held() == {"pacs1": 0}

    run(test)


def test_move_with_no_healthy_backend_is_refused() -> None:
    async def test() -> None:
        site = Site(site_config(query="fanout"), Network())
        answers = await move(site, disable=True)
        (final,) = answers
        assert final.command.status == Status.OUT_OF_RESOURCES
        assert final.command.error_comment == "no healthy backend in pool pacs"

    run(test)


def test_move_without_a_route_is_refused() -> None:
    async def test() -> None:
        config = site_config(query="fanout")
        config["routes"] = [{"name": "stores", "pool": "pacs", "match": {"command": "C-STORE"}}]
        site = Site(config, Network())
        (final,) = await move(site)
        assert final.command.status == Status.NOT_AUTHORIZED
        assert final.command.error_comment == "no route matches this C-MOVE"

    run(test)


def test_move_via_balancer_to_an_unknown_destination_is_refused() -> None:
    async def test() -> None:
        network = Network()
        serve(network, 1, mover(1))
        site = Site(site_config(["pacs1"], move_destination="via_balancer"), network)
        (final,) = await move(site, destination="NOWHERE")
        assert final.command.status == 0xA801
        assert final.command.error_comment == (
            "move destination NOWHERE is not in dicomlb's dicom_nodes"
        )
        assert requests_seen(network, CommandField.C_MOVE_RQ) == []

    run(test)


def test_move_via_balancer_relays_sub_operations_to_the_real_destination(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The backend is told to move to DICOMLB; its sub-operation C-STOREs arrive on
    dicomlb's listener from its own AE title and reach DEST with the client's Message ID;
    DEST's statuses go back to the backend, and the backend's counts to the client."""
    site_ref: list[Site] = []
    sub_statuses: list[int | None] = []
    dest_statuses = {"1.1": Status.SUCCESS, "1.2": 0xA700}

    async def sub_operations(scp: FakeSCP, message: Message) -> None:
        backend = await site_ref[0].client("PACS1")
        for n, uid in enumerate(dest_statuses, 1):
            command = c_store(
                n, uid, originator_ae="CLIENT", originator_id=message.command.message_id
            )
            backend.send(CT_CTX, command, b"\x08\x00\x18\x00" + b"x" * 64)
            answer = await backend.next_message()
            sub_statuses.append(answer.command.status)
        backend.release()
        await backend.closed
        scp.send(message.context_id, counted(reply(message, 0xB000), 0, 1, 1, 0))

    tasks: set[asyncio.Task[None]] = set()

    def handle(scp: FakeSCP, message: Message) -> None:
        if message.command.command_field == CommandField.C_MOVE_RQ:
            task = asyncio.get_running_loop().create_task(sub_operations(scp, message))
            tasks.add(task)

    def destination(scp: FakeSCP, message: Message) -> None:
        uid = message.command.sop_instance_uid
        scp.respond(message, dest_statuses[uid])

    async def test() -> None:
        network = Network()
        serve(network, 1, handle)
        network.serve("10.0.0.50", 104, lambda: FakeSCP(ae_title="DEST", handler=destination))
        site = Site(site_config(["pacs1"], move_destination="via_balancer"), network)
        site_ref.append(site)
        with caplog.at_level(logging.INFO):
            answers = await move(site, message_id=77)
        ((_, rq),) = requests_seen(network, CommandField.C_MOVE_RQ)
        assert rq.command.text(Tag.MOVE_DESTINATION) == "DICOMLB"
        assert sub_statuses == [Status.SUCCESS, Status.OUT_OF_RESOURCES]
        dest = [s for s in network.scps if s.ae_title == "DEST"]
        assert len(dest) == 1  # one association to DEST for both sub-operations
        (dest_scp,) = dest
        assert dest_scp.request is not None and dest_scp.request.calling_ae == "PACS1"
        stores = [m.command for m in dest_scp.messages]
        assert [c.us(Tag.MOVE_ORIGINATOR_MESSAGE_ID) for c in stores] == [77, 77]
        assert [c.text(Tag.MOVE_ORIGINATOR_AE_TITLE) for c in stores] == ["CLIENT", "CLIENT"]
        assert dest_scp.released  # released when the backend's association ended
        final = answers[-1].command
        assert final.status == 0xB000 and counts_of(final) == (None, 1, 1, 0)
        assert caplog.text.count("move.suboperation sop_instance_uid=") == 2
        assert "destination=DEST originator_aet=CLIENT message_id=77 status=0x0000" in caplog.text
        assert "mode=via_balancer" in caplog.text
        assert len(site.runtime.moves) == 0

    run(test)


def test_sub_operation_to_an_unreachable_destination_fails_to_the_backend() -> None:
    async def test() -> None:
        network = Network()
        site = Site(site_config(["pacs1"], move_destination="via_balancer"), network)
        pending = site.runtime.moves.register(
            originator_ae="CLIENT", client_message_id=3, destination="DEST", backends=["PACS1"]
        )
        backend = await site.client("PACS1")
        command = c_store(1, "1.1", originator_ae="CLIENT", originator_id=pending.message_id)
        backend.send(CT_CTX, command, b"\x08\x00\x18\x00" + b"x" * 8)
        answer = await backend.next_message()
        assert answer.command.status == Status.OUT_OF_RESOURCES
        assert "Connect call failed" in (answer.command.error_comment or "")
        # the association is still usable: a second one gets its answer too
        backend.send(CT_CTX, command.replace({Tag.MESSAGE_ID: 2}), b"\x08\x00\x18\x00")
        assert (await backend.next_message()).command.responded_to == 2

    run(test)


def test_sub_operation_refused_by_the_destination_context() -> None:
    async def test() -> None:
        network = Network()
        network.serve(
            "10.0.0.50", 104, lambda: FakeSCP(ae_title="DEST", contexts={VERIFICATION: ()})
        )
        site = Site(site_config(["pacs1"], move_destination="via_balancer"), network)
        pending = site.runtime.moves.register(
            originator_ae="CLIENT", client_message_id=3, destination="DEST", backends=["PACS1"]
        )
        backend = await site.client("PACS1")
        command = c_store(1, "1.1", originator_ae="CLIENT", originator_id=pending.message_id)
        backend.send(CT_CTX, command, b"\x08\x00\x18\x00")
        answer = await backend.next_message()
        assert answer.command.status == Status.OUT_OF_RESOURCES
        assert "DEST refused" in (answer.command.error_comment or "")

    run(test)


# ------------------------------------------------------------------ C-GET


def getter(
    instances: list[str],
    *,
    extra: Callable[[FakeSCP, Message], None] | None = None,
    padding: int = 0,
) -> Any:
    """A C-GET SCP: each instance sent as a C-STORE on its association, the final response
    once the client answered them all."""
    state: dict[str, Any] = {}

    def handle(scp: FakeSCP, message: Message) -> None:
        field = message.command.command_field
        if field == CommandField.C_GET_RQ:
            assert scp.request is not None
            ct = next(c.context_id for c in scp.request.contexts if c.abstract_syntax == CT)
            state["get"] = message
            state["answers"] = []
            if extra is not None:
                extra(scp, message)
            for n, uid in enumerate(instances, 100):
                data = b"\x08\x00\x18\x00" + uid.encode().ljust(8, b"\0") + bytes(padding)
                scp.send(ct, c_store(n, uid), data)
            if not instances:
                scp.send(message.context_id, counted(reply(message, 0), 0, 0, 0, 0))
        elif field == CommandField.C_STORE_RSP and message.command.responded_to >= 100:
            state["answers"].append(message.command)
            if len(state["answers"]) == len(instances):
                get = state["get"]
                failed = sum(1 for a in state["answers"] if a.status)
                done = len(instances) - failed
                status = 0xB000 if failed else Status.SUCCESS
                scp.send(get.context_id, counted(reply(get, status), 0, done, failed, 0))

    handle.state = state  # type: ignore[attr-defined]
    return handle


async def get(site: Site, client: FakeClient, statuses: dict[str, int]) -> list[Message]:
    """Send a C-GET; answer each sub-operation with its status; the client's C-GET-RSPs."""
    client.send(GET_CTX, request(CommandField.C_GET_RQ, STUDY_ROOT_GET, 11), study_query(STUDY))
    answers = []
    while True:
        message = await client.next_message()
        if message.command.command_field == CommandField.C_STORE_RQ:
            assert message.data is not None
            uid = message.command.sop_instance_uid
            store_rsp = reply(message, statuses.get(uid, 0))
            client.send(message.context_id, store_rsp)
            continue
        answers.append(message)
        if message.command.status not in (0xFF00, 0xFF01):
            return answers


def test_get_streams_sub_operations_to_the_client_and_answers_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def test() -> None:
        network = Network()
        handler = getter(["1.1", "1.2"])
        serve(network, 1, handler)
        site = Site(site_config(["pacs1"], query="one"), network)
        client = await site.client(get_role=True)
        with caplog.at_level(logging.DEBUG):
            answers = await get(site, client, {"1.2": 0xA700})
        final = answers[-1].command
        assert final.status == 0xB000
        assert counts_of(final) == (None, 1, 1, 0)
        backend_answers = handler.state["answers"]
        # The backend sees its own Message IDs answered, with the client's statuses.
        assert [(a.responded_to, a.status) for a in backend_answers] == [(100, 0), (101, 0xA700)]
        scp = next(s for s in network.scps if handler.state.get("get") in s.messages)
        assert scp.request is not None
        roles = scp.request.user_info.roles
        assert any(r.sop_class_uid == CT and r.scp_role for r in roles)  # the client's role
        assert "get.suboperation sop_instance_uid=1.2 backend=pacs1 status=0xA700" in caplog.text
        assert "get.relayed route=all pool=pacs backends=pacs1" in caplog.text
        client.release()
        await client.closed
        await settle()
        assert site.held() == {"pacs1": 0}

    run(test)


def test_get_to_a_client_that_stops_reading_stops_reading_the_backend() -> None:
    async def test() -> None:
        network = Network()
        handler = getter(["1.1", "1.2", "1.3", "1.4"], padding=100_000)
        serve(network, 1, handler)
        site = Site(site_config(["pacs1"], query="one"), network)
        client = await site.client(get_role=True)
        assert client.transport is not None
        client.transport.pause_reading()
        getting = asyncio.ensure_future(get(site, client, {}))
        await settle()
        scp = next(s for s in network.scps if handler.state.get("get") in s.messages)
        assert scp.transport is not None and scp.transport.peer is not None
        assert not scp.transport.peer.is_reading()  # dicomlb stopped reading the backend
        assert scp.transport.get_write_buffer_size() > 0
        client.transport.resume_reading()
        answers = await asyncio.wait_for(getting, 5)
        assert answers[-1].command.status == Status.SUCCESS
        assert counts_of(answers[-1].command) == (None, 4, 0, 0)
        assert scp.transport.peer.is_reading()
        client.release()
        await client.closed
        await settle()
        assert site.held() == {"pacs1": 0}

    run(test)


def test_get_sub_operations_the_client_cannot_take_are_refused_to_the_backend(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def refused(scp: FakeSCP, message: Message) -> None:
        assert scp.request is not None
        echo = next(c.context_id for c in scp.request.contexts if c.abstract_syntax == VERIFICATION)
        # a C-STORE on a context the client never proposed, with its data set
        scp.send(echo, c_store(90, "9.9"), b"\x08\x00\x18\x00")
        # and a request that is no C-STORE
        scp.send(echo, request(CommandField.C_FIND_RQ, STUDY_ROOT_FIND, 91), study_query())

    async def test() -> None:
        network = Network()
        handler = getter(["1.1"], extra=refused)
        serve(network, 1, handler)
        site = Site(site_config(["pacs1"], query="one"), network)
        client = await site.client(get_role=True)
        answers = await get(site, client, {})
        assert answers[-1].command.status == Status.SUCCESS
        scp = next(s for s in network.scps if handler.state.get("get") in s.messages)
        refusals = {
            m.command.responded_to: m.command
            for m in scp.messages
            if m.command.responded_to in (90, 91)
        }
        assert refusals[90].status == Status.SOP_CLASS_NOT_SUPPORTED
        assert refusals[90].error_comment == "the client did not accept this SOP class for C-GET"
        assert refusals[91].error_comment == "dicomlb does not relay C-FIND on a C-GET"
        assert caplog.text.count("get.suboperation sop_instance_uid=") == 2

    run(test)


def test_get_response_for_no_sub_operation_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    def stray(scp: FakeSCP, message: Message) -> None:
        pass

    async def test() -> None:
        network = Network()
        handler = getter(["1.1"], extra=stray)
        serve(network, 1, handler)
        site = Site(site_config(["pacs1"], query="one"), network)
        client = await site.client(get_role=True)
        client.send(GET_CTX, request(CommandField.C_GET_RQ, STUDY_ROOT_GET, 11), study_query())
        sub = await client.next_message()
        assert sub.command.command_field == CommandField.C_STORE_RQ
        bogus = reply(sub, 0).replace({Tag.MESSAGE_ID_BEING_RESPONDED_TO: 999})
        client.send(sub.context_id, bogus)
        client.send(sub.context_id, reply(sub, 0))
        final = await client.next_message()
        assert final.command.status == Status.SUCCESS
        assert "get.unexpected_response calling_aet=CLIENT command=C-STORE message_id=999" in (
            caplog.text
        )
        assert len(handler.state["answers"]) == 1

    run(test)


def test_get_without_a_route_or_backend_is_refused() -> None:
    async def test() -> None:
        site = Site(site_config(query="fanout"), Network())
        client = await site.client(get_role=True)
        for state in site.runtime.backends.values():
            state.enabled = False
        (final,) = await get(site, client, {})
        assert final.command.status == Status.OUT_OF_RESOURCES
        config = site_config(query="fanout")
        config["routes"] = [{"name": "stores", "pool": "pacs", "match": {"command": "C-STORE"}}]
        other = Site(config, Network())
        client = await other.client(get_role=True)
        (final,) = await get(other, client, {})
        assert final.command.status == Status.NOT_AUTHORIZED

    run(test)

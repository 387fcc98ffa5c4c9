"""The listener's shell (`dicom/acceptor.py`) driven by a scripted client over the in-memory
network: what a client sees (accept, reject, abort, release, responses), what the listener
counts, and the timers (ARTIM, idle) from short configured timeouts."""

from __future__ import annotations

import asyncio
import logging

import pytest

from dicomlb.dicom.acceptor import InboundAssociation
from dicomlb.dicom.association import ConnectionClosed
from dicomlb.dicom.dimse import CommandField, Status, Tag, echo_request, response
from dicomlb.dicom.pdu import (
    Abort,
    AbortSource,
    AssociateAccept,
    AssociateReject,
    ContextResult,
    ReleaseReply,
    encode,
)
from tests.unit.fakenet import FakeSCP, Message, ignore, settle
from tests.unit.helpers import (
    CT_IMAGE_STORAGE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    VERIFICATION,
    make_request,
)
from tests.unit.shells import BACKEND_HOSTS, Front, backend, config, instance, run, store_request

ECHO_ONLY = make_request(contexts=((1, VERIFICATION, (IMPLICIT_VR_LE,)),))


def test_an_echo_is_answered_and_the_release_ends_the_association(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)

    async def test() -> None:
        front = Front(config(backend("a")))
        client = await front.associate(ECHO_ONLY)
        stats = front.listener.stats
        assert (stats.active, stats.accepted, stats.negotiating) == (1, 1, 0)
        assert stats.by_calling_aet == {"STORESCU": 1} and stats.by_ip == {"10.0.0.5": 1}
        client.send(1, echo_request(7))
        answer = await client.next_message()
        assert answer.command.status == Status.SUCCESS and answer.command.responded_to == 7
        client.release()
        assert isinstance(await client.next(), ReleaseReply)
        assert await client.next() == ConnectionClosed(expected=True)
        await settle()
        assert stats.active == 0 and not stats.by_calling_aet and not stats.by_ip
        assert not front.listener.associations

    run(test)
    assert "association.accepted peer=10.0.0.5:50000 calling_aet=STORESCU" in caplog.text
    assert "contexts=1/1" in caplog.text
    assert "messages=1" in caplog.text and "outcome='released'" in caplog.text


def test_an_association_over_the_limit_is_rejected_and_closed_by_artim(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def test() -> None:
        front = Front(
            config(backend("a"), listener={"max_associations": 1, "artim_timeout": "50ms"})
        )
        first = await front.associate(ECHO_ONLY)
        second = front.connect(("10.0.0.6", 50001))
        second.associate(ECHO_ONLY)
        rejection = await second.next()
        assert isinstance(rejection, AssociateReject)
        assert rejection.result == 2  # transient: try later
        # The client does not close: ARTIM does (PS3.8 Sta13).
        assert isinstance(await second.next(), ConnectionClosed)
        assert front.listener.stats.rejected == 1
        first.release()
        await first.closed

    run(test)
    assert "association.rejected peer=10.0.0.6:50001" in caplog.text
    assert "max_associations" in caplog.text


def test_an_association_is_rejected_while_no_backend_can_take_its_messages(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def test() -> None:
        front = Front(config(backend("a")))
        front.runtime.backends["a"].enabled = False
        client = front.connect()
        client.associate(make_request())
        rejection = await client.next()
        assert isinstance(rejection, AssociateReject)
        assert (rejection.result, rejection.source, rejection.reason) == (2, 3, 1)  # congestion
        client.close()
        await client.closed
        # Verification only needs no backend: accepted.
        await front.associate(ECHO_ONLY)

    run(test)
    assert "why='no healthy backend in any pool a route uses'" in caplog.text


def test_a_client_silent_after_connecting_is_closed_by_artim(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)

    async def test() -> None:
        front = Front(config(backend("a"), listener={"artim_timeout": "50ms"}))
        client = front.connect()
        await settle()
        assert front.listener.stats.negotiating == 1
        assert front.listener.stats.negotiating_by_ip == {"10.0.0.5": 1}
        assert await client.next() == ConnectionClosed(expected=False)
        assert front.listener.stats.negotiating == 0
        assert not front.listener.stats.negotiating_by_ip

    run(test)
    assert "association.artim_expired peer=10.0.0.5:50000 artim=0.05s bytes=0" in caplog.text


def test_connections_over_the_negotiating_limit_are_closed_on_arrival(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def test() -> None:
        front = Front(config(backend("a"), listener={"max_negotiating": 1}))
        front.connect()
        refused = front.connect(("10.0.0.6", 50001))
        assert isinstance(await refused.next(), ConnectionClosed)
        assert front.listener.stats.refused == 1
        # Descriptors near the process limit: refused too.
        front.listener.fd_limit = 0
        assert isinstance(await front.connect(("10.0.0.7", 1)).next(), ConnectionClosed)
        assert front.listener.stats.refused == 2

    run(test)
    assert "listener.refused listener=dicom peer=10.0.0.6:50001 limit=max_negotiating" in (
        caplog.text
    )


def test_garbage_gets_an_abort_and_the_connection_closed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def test() -> None:
        front = Front(config(backend("a")))
        client = front.connect()
        client.write(b"\x42" + bytes(9))
        # the client's own core refuses the A-ABORT before an association: it sees the close
        events = [await client.next(), await client.next()]
        assert any(isinstance(event, ConnectionClosed) for event in events)
        assert client.transport is not None and client.transport.peer is not None
        assert client.transport.peer.written[0] == 0x07  # A-ABORT
        assert front.listener.stats.negotiating == 0

    run(test)
    assert "association.protocol_error peer=10.0.0.5:50000" in caplog.text
    assert "unrecognized PDU type 0x42" in caplog.text


def test_an_abort_right_behind_the_request_is_read_after_the_answer() -> None:
    async def test() -> None:
        front = Front(config(backend("a")))
        client = front.connect()
        wire = client.assoc.send(ECHO_ONLY) + encode(Abort(source=AbortSource.SERVICE_USER))
        client.write(wire)
        assert isinstance(await client.next(), AssociateAccept)
        await client.closed
        await settle()
        assert front.listener.stats.active == 0 and front.listener.stats.accepted == 1

    run(test)


def test_a_client_abort_mid_message_cuts_the_backend_association_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)

    async def test() -> None:
        front = Front(config(backend("a")))
        front.network.serve(*BACKEND_HOSTS["a"], lambda: FakeSCP(handler=ignore))
        client = await front.associate()
        client.send_command(1, store_request())
        client.send_data(1, instance(), is_last=False)
        await asyncio.sleep(0.02)
        client.abort()
        await client.closed
        scp = front.network.scps[-1]
        await asyncio.wait_for(scp.closed, 1)
        assert scp.aborted  # a half-sent instance never completes at the backend
        await settle()
        assert front.runtime.upstreams["a"].open == 0

    run(test)
    assert "outcome='aborted by the client (reason 0)'" in caplog.text


def test_an_idle_client_is_aborted(caplog: pytest.LogCaptureFixture) -> None:
    async def test() -> None:
        front = Front(config(backend("a"), listener={"idle_timeout": "50ms"}))
        client = await front.associate(ECHO_ONLY)
        client.send(1, echo_request(1))
        await client.next_message()
        assert isinstance(await client.next(), Abort)
        assert front.listener.stats.aborted == 1

    run(test)
    assert (
        "association.aborted peer=10.0.0.5:50000 calling_aet=STORESCU reason='idle for 0.05s'"
        in (caplog.text)
    )


def test_a_client_silent_in_the_middle_of_a_message_is_aborted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def test() -> None:
        front = Front(config(backend("a"), listener={"idle_timeout": "50ms"}))
        front.network.serve(*BACKEND_HOSTS["a"], FakeSCP)
        client = await front.associate()
        client.send_command(1, store_request())
        client.send_data(1, instance(), is_last=False)
        assert isinstance(await client.next(), Abort)

    run(test)
    assert "silent for 0.05s in the middle of a message" in caplog.text


def test_waiting_on_a_slow_backend_is_not_idleness() -> None:
    async def test() -> None:
        front = Front(
            config(backend("a"), listener={"idle_timeout": "30ms"}, response_timeout="150ms")
        )
        front.network.serve(*BACKEND_HOSTS["a"], lambda: FakeSCP(handler=ignore))
        client = await front.associate()
        client.send(1, store_request(), instance())
        answer = await client.next_message()
        assert answer.command.status == Status.PROCESSING_FAILURE
        assert "no response within 0.15s" in (answer.command.error_comment or "")

    run(test)


def test_a_client_that_stays_after_the_release_is_closed_by_artim() -> None:
    async def test() -> None:
        front = Front(config(backend("a"), listener={"artim_timeout": "50ms"}))
        client = await front.associate(ECHO_ONLY)
        client.close_after_release = False
        client.release()
        assert isinstance(await client.next(), ReleaseReply)
        assert isinstance(await client.next(), ConnectionClosed)

    run(test)


def test_responses_nobody_asked_for_and_cancels_are_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def test() -> None:
        front = Front(config(backend("a")))
        client = await front.associate(ECHO_ONLY)
        client.send(1, response(echo_request(5), Status.SUCCESS))
        cancel = echo_request(6).replace({Tag.COMMAND_FIELD: CommandField.C_CANCEL_RQ})
        client.send(1, cancel)
        client.send(1, echo_request(8))
        answer = await client.next_message()
        assert answer.command.responded_to == 8  # the only answer

        # While a C-FIND / C-MOVE / C-GET is served, its handlers get them at once.
        inbound = next(iter(front.listener.associations))
        seen: list[int] = []
        inbound.on_response = lambda received: seen.append(received.command.command_field)
        inbound.on_cancel = lambda received: seen.append(received.command.command_field)
        client.send(1, response(echo_request(5), Status.SUCCESS))
        client.send(1, cancel)
        client.send(1, echo_request(9))
        await client.next_message()
        assert seen == [CommandField.C_ECHO_RSP, CommandField.C_CANCEL_RQ]

    run(test)
    assert "association.unexpected_response peer=10.0.0.5:50000" in caplog.text


def test_stopping_the_listener_aborts_associations_after_the_grace() -> None:
    async def test() -> None:
        front = Front(config(backend("a")))
        client = await front.associate(ECHO_ONLY)
        await front.listener.stop(0.05)
        assert isinstance(await client.next(), Abort)
        await client.closed

    run(test)


def test_the_first_association_is_answered_as_the_backend_would() -> None:
    async def test() -> None:
        front = Front(config(backend("a")))
        takes = {VERIFICATION: [IMPLICIT_VR_LE], CT_IMAGE_STORAGE: [IMPLICIT_VR_LE]}
        front.network.serve(*BACKEND_HOSTS["a"], lambda: FakeSCP(contexts=takes))
        client = front.connect()
        client.associate(make_request())
        accept = await client.next()
        assert isinstance(accept, AssociateAccept)
        ct = next(ctx for ctx in accept.contexts if ctx.context_id == 1)
        # The client proposed explicit first; the backend takes implicit only.
        assert ct.result == ContextResult.ACCEPTANCE and ct.transfer_syntax == IMPLICIT_VR_LE
        assert front.network.scps[0].released  # the question was released at once

    run(test)


def test_a_failure_while_asking_backends_still_answers_the_client(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken() -> FakeSCP:
        raise RuntimeError("no such thing")

    async def test() -> None:
        front = Front(config(backend("a")))
        front.network.serve(*BACKEND_HOSTS["a"], broken)
        client = front.connect()
        client.associate(make_request())
        assert isinstance(await client.next(), AssociateAccept)

    run(test)
    assert "contexts.ask_failed calling_aet=STORESCU reason='no such thing'" in caplog.text


def test_a_client_gone_while_backends_are_asked_is_not_answered() -> None:
    async def test() -> None:
        front = Front(config(backend("a"), connect_timeout="100ms"))
        front.network.hang(*BACKEND_HOSTS["a"])
        client = front.connect()
        client.associate(make_request())
        await asyncio.sleep(0.02)
        client.close()
        assert isinstance(await client.next(), ConnectionClosed)
        await asyncio.sleep(0.15)
        assert client.transport is not None and client.transport.peer is not None
        assert not client.transport.peer.written  # nothing was ever sent back
        assert front.listener.stats.negotiating == 0

    run(test)


def test_a_large_instance_to_a_slow_backend_slows_the_client_down() -> None:
    async def test() -> None:
        front = Front(config(backend("a")))
        front.network.serve(*BACKEND_HOSTS["a"], FakeSCP)
        client = await front.associate()
        client.send_command(1, store_request())
        head = instance()
        client.send_data(1, head, is_last=False)
        await asyncio.sleep(0.02)
        scp = front.network.scps[-1]
        assert scp.transport is not None
        scp.transport.pause_reading()  # the backend stops reading
        chunk = bytes(16000)
        for _ in range(40):
            client.send_data(1, chunk, is_last=False)
        client.send_data(1, b"end!", is_last=True)
        await asyncio.sleep(0.05)
        inbound = next(iter(front.listener.associations))
        assert inbound._reading_paused  # the client is read no faster than the backend
        assert client.transport is not None and client.transport.buffered > 0
        scp.transport.resume_reading()
        answer = await client.next_message()
        assert answer.command.status == Status.SUCCESS
        assert scp.messages[-1].data == head + chunk * 40 + b"end!"  # relayed untouched

    run(test)


def test_what_the_services_send_reaches_the_client() -> None:
    async def test() -> None:
        front = Front(config(backend("a")))
        client = await front.associate(ECHO_ONLY)
        inbound: InboundAssociation = next(iter(front.listener.associations))
        request = echo_request(3)
        assert inbound.next_message_id() == 1 and inbound.next_message_id() == 2
        inbound.send_message(
            1, response(request, 0xFF00).replace({Tag.COMMAND_DATA_SET_TYPE: 0}), b"id"
        )
        inbound.send_command(1, response(request, Status.SUCCESS))
        first = await client.next_message()
        assert first.data == b"id" and first.command.status == 0xFF00
        assert (await client.next_message()).command.status == Status.SUCCESS
        # A full client buffer defers what waits for room.
        ran: list[str] = []
        inbound.pause_writing()
        assert not inbound.writable
        inbound.when_writable(lambda: ran.append("later"))
        assert ran == []
        inbound.resume_writing()
        assert ran == ["later"]
        inbound.when_writable(lambda: ran.append("now"))
        assert ran == ["later", "now"]
        # After an abort nothing more is written.
        inbound.abort("test over")
        assert isinstance(await client.next(), Abort)
        inbound.send_command(1, response(request, Status.SUCCESS))
        inbound.send_message(1, response(request, Status.SUCCESS))
        inbound.send_data(1, b"x", True)
        inbound.abort("again")
        await client.closed
        assert client.events.empty() or isinstance(client.events.get_nowait(), ConnectionClosed)

    run(test)


def test_a_release_request_after_messages_is_answered_after_them() -> None:
    async def test() -> None:
        front = Front(config(backend("a")))
        client = await front.associate(ECHO_ONLY)
        for n in range(3):
            client.send(1, echo_request(n + 1))
        client.release()
        answers = [await client.next() for _ in range(4)]
        assert [a.command.responded_to for a in answers[:3] if isinstance(a, Message)] == [1, 2, 3]
        assert isinstance(answers[3], ReleaseReply)

    run(test)


def test_a_store_data_set_is_relayed_in_order_with_its_command(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def test() -> None:
        front = Front(config(backend("a")))
        front.network.serve(*BACKEND_HOSTS["a"], FakeSCP)
        client = await front.associate()
        client.send(1, store_request(1, instance="1.2.3.4.5"), instance())
        answer = await client.next_message()
        assert answer.command.status == Status.SUCCESS
        assert answer.command.command_field == CommandField.C_STORE_RSP
        relayed = front.network.scps[-1].messages[-1]
        assert relayed.data == instance() and relayed.command.sop_instance_uid == "1.2.3.4.5"
        assert front.network.scps[-1].request is not None
        proposed = {
            (c.abstract_syntax, c.transfer_syntaxes[0])
            for c in front.network.scps[-1].request.contexts
        }
        assert (CT_IMAGE_STORAGE, EXPLICIT_VR_LE) in proposed

    run(test)

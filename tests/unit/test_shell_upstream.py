"""The upstream shell (`dicom/upstream.py`) over the in-memory network: associations
opened, reused, capped and released; every way a backend fails typed with its cause; no
sockets, deadlines from short configured timeouts."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from dicomlb.config import build_snapshot
from dicomlb.dicom.dimse import Command, CommandField, Status, Tag, echo_request, response
from dicomlb.dicom.pdu import (
    AssociateReject,
    ContextResult,
    RejectResult,
    RejectSource,
)
from dicomlb.dicom.upstream import (
    Ask,
    Busy,
    ClientUpstreams,
    ContextRejected,
    Rejected,
    Unreachable,
    UpstreamAssociation,
    UpstreamError,
    UpstreamPool,
    ask_backends,
    write_buffers,
)
from dicomlb.health import Cause
from dicomlb.runtime import Runtime
from tests.unit.fakenet import (
    FakeSCP,
    FakeTransport,
    Message,
    Network,
    data_response,
    ignore,
    pipe,
    settle,
)
from tests.unit.helpers import CT_IMAGE_STORAGE, EXPLICIT_VR_LE, IMPLICIT_VR_LE, VERIFICATION

ECHO = (VERIFICATION, IMPLICIT_VR_LE)
CT = (CT_IMAGE_STORAGE, EXPLICIT_VR_LE)
FIND = ("1.2.840.10008.5.1.4.1.2.2.1", EXPLICIT_VR_LE)
KEY = ("MODALITY", "SCP", ())
HOST, PORT = "10.0.0.1", 104


def snapshot(backend: dict[str, Any] | None = None, **pool: Any) -> Any:
    return build_snapshot(
        {
            "pools": {
                "p": {
                    "backends": [{"name": "scp", "dicom": f"SCP@{HOST}:{PORT}", **(backend or {})}],
                    "connect_timeout": "200ms",
                    "acquire_timeout": "100ms",
                    "response_timeout": "200ms",
                    **pool,
                }
            },
            "routes": [{"name": "all", "pool": "p"}],
        }
    )


def upstream_pool(network: Network, backend: dict[str, Any] | None = None, **pool: Any) -> Any:
    runtime = Runtime(snapshot(backend, **pool), dial=network.dial)
    return runtime.upstreams["scp"]


def run(test: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(10):
            await test()

    asyncio.run(bounded())


def store_request(message_id: int = 1) -> Command:
    return Command.build(
        {
            Tag.AFFECTED_SOP_CLASS_UID: CT_IMAGE_STORAGE,
            Tag.COMMAND_FIELD: CommandField.C_STORE_RQ,
            Tag.MESSAGE_ID: message_id,
            Tag.PRIORITY: 0,
            Tag.COMMAND_DATA_SET_TYPE: 0,
            Tag.AFFECTED_SOP_INSTANCE_UID: "1.2.3.4",
        }
    )


def find_request(message_id: int = 1) -> Command:
    return Command.build(
        {
            Tag.AFFECTED_SOP_CLASS_UID: FIND[0],
            Tag.COMMAND_FIELD: CommandField.C_FIND_RQ,
            Tag.MESSAGE_ID: message_id,
            Tag.PRIORITY: 0,
            Tag.COMMAND_DATA_SET_TYPE: 0,
        }
    )


async def echo(up: UpstreamAssociation, timeout: float = 1.0) -> int | None:
    context = up.context_for(ECHO)
    assert context is not None
    answer = await up.send_command(context, echo_request(up.next_message_id()), timeout=timeout)
    return answer.status


def last_pdu_type(scp: FakeSCP) -> int:
    """The type of the last 10-byte PDU dicomlb wrote to `scp` (A-ABORT, A-RELEASE-RQ)."""
    assert scp.transport is not None and scp.transport.peer is not None
    return scp.transport.peer.written[-10]


# ------------------------------------------------------------ leases and the pool


def test_a_lease_relays_and_its_association_is_reused_then_released() -> None:
    async def test() -> None:
        network = Network()
        network.serve(HOST, PORT)
        pool = upstream_pool(network)
        for _ in range(3):
            async with pool.lease(KEY, ECHO, [ECHO, CT]) as up:
                assert await echo(up) == Status.SUCCESS
                assert pool.backend.active == 1
        assert pool.backend.active == 0
        assert len(network.scps) == 1  # one association served all three
        scp = network.scps[0]
        assert scp.request is not None and scp.request.calling_ae == "MODALITY"
        assert len(scp.messages) == 3
        assert pool.open == 1 and len(pool.idle) == 1 and pool.last_answer is not None
        await pool.close()
        assert scp.released and pool.open == 0

    run(test)


def test_an_idle_association_is_released_after_the_idle_timeout() -> None:
    async def test() -> None:
        network = Network()
        network.serve(HOST, PORT)
        pool = upstream_pool(network, idle_timeout="50ms")
        async with pool.lease(KEY, ECHO, [ECHO]) as up:
            await echo(up)
        async with pool.lease(KEY, ECHO, [ECHO]) as up:  # reused: the timer re-arms
            await echo(up)
        await asyncio.wait_for(network.scps[0].closed, 2)
        assert network.scps[0].released
        await settle()
        assert pool.open == 0 and not pool.idle

    run(test)


def test_a_refused_connection_is_unreachable_and_frees_the_slot() -> None:
    async def test() -> None:
        network = Network()
        pool = upstream_pool(network)
        with pytest.raises(Unreachable) as caught:
            async with pool.lease(KEY, ECHO, [ECHO]):
                pass
        assert caught.value.cause is Cause.REFUSED
        assert f"cannot associate with SCP@{HOST}:{PORT}" in str(caught.value)
        assert pool.open == 0 and pool.backend.active == 0

    run(test)


def test_a_connection_that_never_completes_is_a_connect_timeout() -> None:
    async def test() -> None:
        network = Network()
        network.hang(HOST, PORT)
        pool = upstream_pool(network, connect_timeout="50ms")
        with pytest.raises(Unreachable) as caught:
            async with pool.lease(KEY, ECHO, [ECHO]):
                pass
        assert caught.value.cause is Cause.CONNECT_TIMEOUT
        assert "no connection within connect_timeout 0.05s" in str(caught.value)
        assert pool.open == 0

    run(test)


def test_no_accept_in_time_is_unreachable_and_the_association_aborted() -> None:
    async def test() -> None:
        network = Network()
        network.serve(HOST, PORT, lambda: FakeSCP(silent=True))
        pool = upstream_pool(network, connect_timeout="50ms")
        with pytest.raises(Unreachable) as caught:
            async with pool.lease(KEY, ECHO, [ECHO]):
                pass
        assert caught.value.cause is Cause.NO_ACCEPT
        assert "no A-ASSOCIATE-AC within connect_timeout" in str(caught.value)
        await asyncio.wait_for(network.scps[0].closed, 1)
        assert last_pdu_type(network.scps[0]) == 0x07  # A-ABORT (held unread by its core)
        assert pool.open == 0

    run(test)


@pytest.mark.parametrize(
    ("result", "permanent", "cause"),
    [
        (RejectResult.PERMANENT, True, Cause.REJECTED_PERMANENT),
        (RejectResult.TRANSIENT, False, Cause.REJECTED_TRANSIENT),
    ],
)
def test_a_rejection_is_typed_permanent_or_transient(
    result: RejectResult, permanent: bool, cause: Cause
) -> None:
    async def test() -> None:
        network = Network()
        rejection = AssociateReject(result=result, source=RejectSource.SERVICE_USER, reason=3)
        network.serve(HOST, PORT, lambda: FakeSCP(reject=rejection))
        pool = upstream_pool(network)
        with pytest.raises(Rejected) as caught:
            async with pool.lease(KEY, ECHO, [ECHO]):
                pass
        assert caught.value.permanent is permanent and caught.value.cause is cause
        assert f"association rejected (result {int(result)}, source 1, reason 3)" in str(
            caught.value
        )
        assert pool.open == 0

    run(test)


def test_a_refused_context_is_learned_and_not_asked_again() -> None:
    async def test() -> None:
        network = Network()
        network.serve(HOST, PORT, lambda: FakeSCP(contexts={VERIFICATION: [IMPLICIT_VR_LE]}))
        pool = upstream_pool(network)
        with pytest.raises(ContextRejected) as first:
            async with pool.lease(KEY, CT, [CT]):
                pass
        assert not first.value.learned
        assert str(first.value) == f"scp does not support SOP class {CT_IMAGE_STORAGE}"
        with pytest.raises(ContextRejected) as second:
            async with pool.lease(KEY, CT, [CT]):
                pass
        assert second.value.learned
        assert len(network.scps) == 1  # the second was refused without an association
        await settle()
        assert network.scps[0].released and pool.open == 0

    run(test)


def test_a_refused_transfer_syntax_names_it() -> None:
    async def test() -> None:
        network = Network()
        takes = {CT_IMAGE_STORAGE: [IMPLICIT_VR_LE], VERIFICATION: [IMPLICIT_VR_LE]}
        network.serve(HOST, PORT, lambda: FakeSCP(contexts=takes))
        pool = upstream_pool(network)
        with pytest.raises(ContextRejected) as caught:
            async with pool.lease(KEY, CT, [CT]):
                pass
        assert str(caught.value) == (
            f"scp rejected abstract syntax {CT_IMAGE_STORAGE} with transfer syntax {EXPLICIT_VR_LE}"
        )

    run(test)


def test_a_backend_without_a_dicom_address_is_refused_for_dicom() -> None:
    async def test() -> None:
        runtime = Runtime(
            build_snapshot(
                {
                    "pools": {
                        "p": {
                            "backends": [
                                {
                                    "name": "web",
                                    "http": "http://10.0.0.2:8042",
                                    "store_via": "orthanc_rest",
                                }
                            ]
                        }
                    },
                    "routes": [{"name": "all", "pool": "p"}],
                }
            ),
            dial=Network().dial,
        )
        with pytest.raises(ContextRejected, match="web has no dicom address"):
            async with runtime.upstreams["web"].lease(KEY, CT, [CT]):
                pass

    run(test)


def test_a_full_pool_makes_callers_wait_then_busy() -> None:
    async def test() -> None:
        network = Network()
        network.serve(HOST, PORT)
        pool = upstream_pool(network, {"max_associations": 1}, acquire_timeout="50ms")
        async with pool.lease(KEY, ECHO, [ECHO]) as held:
            started = asyncio.get_running_loop().time()
            with pytest.raises(Busy) as caught:
                async with pool.lease(KEY, ECHO, [ECHO]):
                    pass
            assert asyncio.get_running_loop().time() - started >= 0.04
            assert str(caught.value) == "all 1 associations to scp busy for 0.05s"
            assert caught.value.cause is Cause.BUSY

            # A waiter gets the slot as soon as the holder gives it back.
            async def second() -> int | None:
                async with pool.lease(KEY, ECHO, [ECHO]) as up:
                    return await echo(up)

            waiting = asyncio.create_task(second())
            await settle()
            assert not waiting.done()
            await echo(held)
        assert await waiting == Status.SUCCESS
        assert len(network.scps) == 1  # the waiter reused the association given back

    run(test)


def test_a_cancelled_waiter_passes_the_freed_slot_on() -> None:
    async def test() -> None:
        network = Network()
        network.serve(HOST, PORT)
        pool = upstream_pool(network, {"max_associations": 1}, acquire_timeout="1s")

        async def lease_and_echo() -> int | None:
            async with pool.lease(KEY, ECHO, [ECHO]) as up:
                return await echo(up)

        async with pool.lease(KEY, ECHO, [ECHO]):
            first = asyncio.create_task(lease_and_echo())
            second = asyncio.create_task(lease_and_echo())
            await settle()
        first.cancel()  # woken by the give-back, cancelled before it ran
        assert await second == Status.SUCCESS
        assert first.cancelled()

    run(test)


def test_idle_associations_of_another_identity_are_replaced_when_full() -> None:
    async def test() -> None:
        network = Network()
        network.serve(HOST, PORT)
        pool = upstream_pool(network, {"max_associations": 1})
        async with pool.lease(KEY, ECHO, [ECHO]) as up:
            await echo(up)
        other = ("WORKSTATION", "SCP", ())
        async with pool.lease(other, ECHO, [ECHO]) as up:
            await echo(up)
        assert len(network.scps) == 2
        assert network.scps[0].released  # the idle one made room
        assert network.scps[1].request is not None
        assert network.scps[1].request.calling_ae == "WORKSTATION"

    run(test)


def test_an_idle_association_the_backend_closes_leaves_the_pool() -> None:
    async def test() -> None:
        network = Network()
        network.serve(HOST, PORT)
        pool = upstream_pool(network)
        async with pool.lease(KEY, ECHO, [ECHO]) as up:
            await echo(up)
        network.scps[0].release()  # the backend's own idle timeout
        await asyncio.wait_for(network.scps[0].closed, 1)
        await settle()
        assert pool.open == 0 and not pool.idle
        assert isinstance(up.error, UpstreamError) and up.error.cause is Cause.RELEASED

    run(test)


def test_an_unusable_idle_association_is_pruned_on_acquire() -> None:
    async def test() -> None:
        network = Network()
        network.serve(HOST, PORT)
        pool = upstream_pool(network)
        async with pool.lease(KEY, ECHO, [ECHO]) as up:
            await echo(up)
        assert up.transport is not None
        up.error = UpstreamError("gone", Cause.CLOSED)  # unusable, not yet closed
        async with pool.lease(KEY, ECHO, [ECHO]) as again:
            assert again is not up
            assert await echo(again) == Status.SUCCESS
        assert pool.open == 1

    run(test)


def test_a_lease_left_by_an_error_aborts_a_half_sent_message() -> None:
    async def test() -> None:
        network = Network()
        network.serve(HOST, PORT, lambda: FakeSCP(handler=ignore))
        pool = upstream_pool(network)
        with pytest.raises(RuntimeError):
            async with pool.lease(KEY, CT, [CT]) as up:
                context = up.context_for(CT)
                assert context is not None
                up.send_command(context, store_request(), [(b"half", False)])
                raise RuntimeError("the client went")
        await asyncio.wait_for(network.scps[0].closed, 1)
        assert network.scps[0].aborted
        assert pool.open == 0

    run(test)


def test_a_probe_is_released_after_use_never_kept() -> None:
    async def test() -> None:
        network = Network()
        network.serve(HOST, PORT)
        pool = upstream_pool(network)
        async with pool.probe(KEY, ECHO, 0.2) as up:
            assert await echo(up) == Status.SUCCESS
            assert pool.backend.active == 0  # a check is not a message
        await asyncio.wait_for(network.scps[0].closed, 1)
        await settle()
        assert network.scps[0].released and pool.open == 0 and not pool.idle

    run(test)


def test_capacity_is_learned_when_the_backend_does_not_answer_while_held() -> None:
    async def test() -> None:
        network = Network()
        scps = iter([FakeSCP(), FakeSCP(silent=True), FakeSCP()])
        network.serve(HOST, PORT, lambda: next(scps))
        pool = upstream_pool(network, {"max_associations": 2}, connect_timeout="50ms")
        async with pool.lease(KEY, ECHO, [ECHO]) as up:
            await echo(up)
        held = await pool.acquire(KEY, ECHO, [ECHO], None)  # the idle one, held again
        # A second association is not answered: the backend takes one; the held one is
        # waited for, then reused.
        task = asyncio.create_task(pool.acquire(KEY, ECHO, [ECHO], None))
        await asyncio.sleep(0.1)
        assert pool.capacity.learned == 1
        pool.give_back(held)
        second = await task
        assert second is held
        pool.give_back(second)

    run(test)


def test_per_client_associations_stay_with_their_client_until_it_ends() -> None:
    async def test() -> None:
        network = Network()
        network.serve(HOST, PORT)
        pool = upstream_pool(network, upstream="per_client")
        client = ClientUpstreams()
        async with pool.lease(KEY, ECHO, [ECHO], owner=client) as first:
            await echo(first)
        assert not pool.idle and pool.open == 1  # parked with its client, not idle
        async with pool.lease(KEY, ECHO, [ECHO], owner=client) as again:
            assert again is first
        # Another identity: the parked association is released for the new one.
        async with pool.lease(("OTHER", "SCP", ()), ECHO, [ECHO], owner=client) as other:
            assert other is not first
        client.close()
        await settle()
        assert all(scp.released for scp in network.scps) and pool.open == 0
        # Once closed, a client parks nothing.
        async with pool.lease(KEY, ECHO, [ECHO], owner=client):
            pass
        await settle()
        assert pool.open == 0

    run(test)


def test_backends_are_asked_about_contexts_before_a_client_is_answered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)

    async def test() -> None:
        network = Network()
        network.serve(HOST, PORT, lambda: FakeSCP(contexts={VERIFICATION: [IMPLICIT_VR_LE]}))
        pool = upstream_pool(network)
        await ask_backends([Ask(upstream=pool, key=KEY, pairs=(CT, FIND), timeout=0.2)])
        assert "contexts.asked backend=scp" in caplog.text and "refused=2" in caplog.text
        assert pool.unknown(KEY, [CT, FIND]) == []
        await settle()
        assert network.scps[0].released and pool.open == 0
        # Nothing unknown: nobody asked.
        await pool.ask(KEY, [CT], 0.2)
        assert len(network.scps) == 1
        # Unreachable: logged, nothing learned.
        network.refuse(HOST, PORT)
        await pool.ask(("OTHER", "SCP", ()), [CT], 0.2)
        assert "contexts.not_asked backend=scp calling_aet=OTHER" in caplog.text

    run(test)


# ------------------------------------------------------------ one association


def test_a_response_with_a_data_set_and_pending_responses_reach_their_handlers() -> None:
    async def test() -> None:
        def handler(scp: FakeSCP, message: Message) -> None:
            request = message.command
            for n in range(2):
                scp.send(message.context_id, data_response(request, 0xFF00), b"match%d" % n)
            scp.respond(message, Status.SUCCESS, b"final")

        network = Network()
        network.serve(HOST, PORT, lambda: FakeSCP(handler=handler))
        pool = upstream_pool(network)
        pending: list[bytes | None] = []
        final: list[bytes | None] = []
        async with pool.lease(KEY, FIND, [FIND]) as up:
            context = up.context_for(FIND)
            assert context is not None
            answer = await up.send_command(
                context,
                find_request(up.next_message_id()),
                [(b"identifier", True)],
                timeout=0.2,
                on_pending=lambda command, data: pending.append(data),
                on_final=lambda command, data: final.append(data),
            )
        assert answer.status == Status.SUCCESS
        assert pending == [b"match0", b"match1"] and final == [b"final"]
        assert network.scps[0].messages[0].data == b"identifier"

    run(test)


def test_no_response_in_time_is_a_timeout_and_the_lease_aborts() -> None:
    async def test() -> None:
        answered: list[int] = []

        def slow_first(scp: FakeSCP, message: Message) -> None:
            answered.append(message.command.message_id)
            if len(answered) > 1:
                scp.respond(message, Status.SUCCESS)

        network = Network()
        network.serve(HOST, PORT, lambda: FakeSCP(handler=slow_first))
        pool = upstream_pool(network)
        async with pool.lease(KEY, ECHO, [ECHO]) as up:
            context = up.context_for(ECHO)
            assert context is not None
            lost = up.send_command(context, echo_request(up.next_message_id()), timeout=0.05)
            kept = up.send_command(context, echo_request(up.next_message_id()), timeout=1.0)
            with pytest.raises(TimeoutError):
                await lost
            assert (await kept).status == Status.SUCCESS
            assert not up.clean  # the first is still unanswered
        await asyncio.wait_for(network.scps[0].closed, 1)
        assert network.scps[0].aborted and pool.open == 0

    run(test)


@pytest.mark.parametrize(
    ("script", "cause"),
    [
        (lambda scp, message: scp.abort(), Cause.ABORTED),
        (lambda scp, message: scp.close(), Cause.CLOSED),
        (lambda scp, message: scp.release(), Cause.RELEASED),
        (lambda scp, message: scp.transport.write(b"\x99" + bytes(9)), Cause.MALFORMED_ANSWER),
    ],
)
def test_a_backend_failing_a_message_fails_it_with_its_cause(
    script: Callable[[FakeSCP, Message], None], cause: Cause
) -> None:
    async def test() -> None:
        network = Network()
        network.serve(HOST, PORT, lambda: FakeSCP(handler=script))
        pool = upstream_pool(network)
        async with pool.lease(KEY, ECHO, [ECHO]) as up:
            with pytest.raises(UpstreamError) as caught:
                await echo(up)
        assert caught.value.cause is cause
        with pytest.raises(UpstreamError):
            up.send_command(1, echo_request(9))  # not usable any more
        await settle()
        assert pool.open == 0

    run(test)


def test_an_abort_while_the_data_set_goes_out_is_the_message_refused() -> None:
    async def test() -> None:
        network = Network()
        network.serve(HOST, PORT)
        pool = upstream_pool(network)
        async with pool.lease(KEY, CT, [CT]) as up:
            context = up.context_for(CT)
            assert context is not None
            future = up.send_command(context, store_request(), [(b"part", False)])
            up.send_data(context, b"more", False)
            network.scps[0].abort()  # it will not take this instance
            with pytest.raises(UpstreamError) as caught:
                await future
            with pytest.raises(UpstreamError):
                await up.drain()
        assert caught.value.cause is Cause.ABORTED_WHILE_SENDING
        with pytest.raises(UpstreamError):
            up.send_data(context, b"late", True)

    run(test)


def test_a_backend_protocol_error_during_negotiation_is_unreachable() -> None:
    async def test() -> None:
        class Garbage(FakeSCP):
            def data_received(self, data: bytes) -> None:
                assert self.transport is not None
                self.transport.write(b"\x42" + bytes(9))

        network = Network()
        network.serve(HOST, PORT, Garbage)
        pool = upstream_pool(network)
        with pytest.raises(Unreachable) as caught:
            async with pool.lease(KEY, ECHO, [ECHO]):
                pass
        assert caught.value.cause is Cause.PROTOCOL_ERROR
        assert "protocol error from backend: unrecognized PDU type 0x42" in str(caught.value)

    run(test)


def test_a_request_from_the_backend_is_answered_or_handed_over(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def test() -> None:
        sub_store = store_request(77)

        def handler(scp: FakeSCP, message: Message) -> None:
            if message.command.command_field == CommandField.C_ECHO_RQ:
                scp.send(message.context_id, sub_store, b"dataset")  # unexpected here
                scp.respond(message, Status.SUCCESS)

        network = Network()
        network.serve(HOST, PORT, lambda: FakeSCP(handler=handler))
        pool = upstream_pool(network)
        async with pool.lease(KEY, ECHO, [ECHO, CT]) as up:
            assert await echo(up) == Status.SUCCESS
            await settle()
            refused = network.scps[0].messages[-1].command
            assert refused.command_field == CommandField.C_STORE_RSP
            assert refused.status == Status.UNRECOGNIZED_OPERATION
            # With a handler (a C-GET in flight) the request and its data go there.
            seen: list[object] = []
            up.on_request = seen.append
            assert await echo(up) == Status.SUCCESS
            assert len(seen) == 2  # the command, then the one data fragment
            up.on_request = None
        assert "upstream.unexpected_request backend=scp command=C-STORE" in caplog.text

    run(test)


def test_an_unexpected_response_is_logged_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    async def test() -> None:
        def handler(scp: FakeSCP, message: Message) -> None:
            scp.send(message.context_id, response(echo_request(999), Status.SUCCESS))
            scp.respond(message, Status.SUCCESS)

        network = Network()
        network.serve(HOST, PORT, lambda: FakeSCP(handler=handler))
        pool = upstream_pool(network)
        async with pool.lease(KEY, ECHO, [ECHO]) as up:
            assert await echo(up) == Status.SUCCESS
        assert "upstream.unexpected_command backend=scp command=C-ECHO" in caplog.text

    run(test)


def test_drain_waits_while_the_backend_cannot_take_more() -> None:
    async def test() -> None:
        network = Network()
        network.serve(HOST, PORT)
        pool = upstream_pool(network)
        async with pool.lease(KEY, ECHO, [ECHO]) as up:
            up.pause_writing()
            draining = asyncio.create_task(up.drain())
            await settle()
            assert not draining.done()
            up.resume_writing()
            await draining

    run(test)


def test_release_falls_back_to_abort_when_the_backend_does_not_answer() -> None:
    async def test() -> None:
        class Mute(FakeSCP):
            """Takes the association, never answers its release."""

            def data_received(self, data: bytes) -> None:
                if self.request is None:
                    super().data_received(data)
                else:
                    self.messages.append(Message(0, echo_request(0), data))

        network = Network()
        network.serve(HOST, PORT, Mute)
        pool = upstream_pool(network)
        async with pool.lease(KEY, ECHO, [ECHO]) as up:
            pass
        pool.idle.remove(up)
        await up.release(timeout=0.05)
        await asyncio.wait_for(network.scps[0].closed, 1)
        assert last_pdu_type(network.scps[0]) == 0x07  # A-ABORT after the A-RELEASE-RQ
        await up.release()  # not usable: just closed

    run(test)


def test_release_before_the_association_is_established_aborts() -> None:
    async def test() -> None:
        network = Network()
        network.serve(HOST, PORT, lambda: FakeSCP(silent=True))
        up = await network.dial(lambda: UpstreamAssociation("scp", KEY, [ECHO], 16384), HOST, PORT)
        await up.release()
        await asyncio.wait_for(network.scps[0].closed, 1)
        assert last_pdu_type(network.scps[0]) == 0x07

    run(test)


def test_acceptance_in_a_syntax_not_proposed_is_a_refusal() -> None:
    async def test() -> None:
        class Liar(FakeSCP):
            def _accept(self, request: Any) -> Any:
                accept = super()._accept(request)
                contexts = tuple(
                    type(ctx)(context_id=ctx.context_id, result=ctx.result, transfer_syntax="1.2.3")
                    if ctx.context_id == 1
                    else ctx
                    for ctx in accept.contexts
                )
                return type(accept)(
                    called_ae=accept.called_ae,
                    calling_ae=accept.calling_ae,
                    contexts=contexts,
                    user_info=accept.user_info,
                )

        network = Network()
        network.serve(HOST, PORT, Liar)
        up = await network.dial(
            lambda: UpstreamAssociation("scp", KEY, [CT, ECHO], 16384), HOST, PORT
        )
        await up.established
        assert up.context_for(CT) is None and up.context_for(ECHO) is not None
        assert (CT, ContextResult.TRANSFER_SYNTAXES_NOT_SUPPORTED) in up.answers
        up.abort()

    run(test)


def test_write_buffers_joins_small_writes_and_hands_large_ones_over() -> None:
    async def test() -> None:
        a, b = pipe(asyncio.Protocol(), asyncio.Protocol())
        write_buffers(a, [b"ab", b"cd"])
        big = bytes(300 * 1024)
        write_buffers(a, [big, b"!"])
        assert bytes(a.written) == b"abcd" + big + b"!"
        assert isinstance(b, FakeTransport)

    run(test)


def test_an_upstream_pool_closes_its_idle_and_closing_associations() -> None:
    async def test() -> None:
        network = Network()
        network.serve(HOST, PORT)
        pool: UpstreamPool = upstream_pool(network)
        async with pool.lease(KEY, ECHO, [ECHO]):
            pass
        async with pool.lease(("B", "SCP", ()), ECHO, [ECHO]):
            pass
        pool.retire(pool.idle[0])
        await pool.close()
        assert pool.open == 0 and all(scp.released for scp in network.scps)

    run(test)

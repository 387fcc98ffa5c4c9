"""What a backend's refusal means to the sender: one table over `health.Cause`."""

from __future__ import annotations

from dicomlb.dicom.dimse import Status
from dicomlb.dicom.qr import unanswered_comment
from dicomlb.health import Cause, counts_against_backend
from dicomlb.placement import Refusal, common_refusal, refusal


def test_each_refusal_has_its_status() -> None:
    assert refusal(Cause.REJECTED_PERMANENT) == Refusal(
        Status.NOT_AUTHORIZED, "association rejected"
    )
    assert refusal(Cause.ABORTED) == Refusal(Status.NOT_AUTHORIZED, "request aborted")
    assert refusal(Cause.CONTEXT_REJECTED) == Refusal(
        Status.SOP_CLASS_NOT_SUPPORTED, "context rejected"
    )
    for busy in (Cause.REJECTED_TRANSIENT, Cause.BUSY, Cause.NO_ACCEPT_WHILE_HOLDING):
        assert refusal(busy) == Refusal(Status.OUT_OF_RESOURCES, "busy")


def test_what_says_the_backend_is_unwell_is_no_refusal() -> None:
    for cause in Cause:
        if counts_against_backend(cause):
            assert refusal(cause) is None, cause


def test_a_common_refusal_only_when_every_backend_refused_alike() -> None:
    rejected = refusal(Cause.REJECTED_PERMANENT)
    assert common_refusal([rejected, refusal(Cause.ABORTED)]) == rejected  # both 0x0124
    assert common_refusal([rejected, rejected]) == rejected
    assert common_refusal([rejected, None]) is None
    assert common_refusal([rejected, refusal(Cause.BUSY)]) is None
    assert common_refusal([]) is None


def test_partial_only_when_some_backend_answered() -> None:
    problems = {"pacs-b": "association rejected"}
    assert unanswered_comment(problems) == "partial: no answer from pacs-b (association rejected)"
    assert unanswered_comment(problems, partial=False) == "pacs-b: association rejected"

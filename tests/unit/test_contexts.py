"""contexts.py: what backends accepted and refused, and how negotiation answers from it."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dicomlb.dicom.contexts import LearnedContexts, SyntaxPair, Verdict, combine
from dicomlb.dicom.negotiation import negotiate
from dicomlb.dicom.pdu import AssociateAccept, ContextResult
from dicomlb.snapshot import DicomListenerConfig
from tests.unit.helpers import (
    CT_IMAGE_STORAGE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    MR_IMAGE_STORAGE,
    VERIFICATION,
    make_request,
)

JPEG_LOSSLESS = "1.2.840.10008.1.2.4.57"
HTJ2K = "1.2.840.10008.1.2.4.201"
PACS: tuple[str, str] = ("PACS", "CT_SCANNER")  # (called AE, calling AE)
OK = ContextResult.ACCEPTANCE
NO_SOP_CLASS = ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED
NO_SYNTAX = ContextResult.TRANSFER_SYNTAXES_NOT_SUPPORTED


def test_nothing_known_at_first() -> None:
    assert LearnedContexts().verdict(PACS, (CT_IMAGE_STORAGE, EXPLICIT_VR_LE), 0) is Verdict.UNKNOWN


def test_accepted_and_refused_pairs() -> None:
    table = LearnedContexts()
    table.learn(
        PACS,
        [((CT_IMAGE_STORAGE, EXPLICIT_VR_LE), OK), ((CT_IMAGE_STORAGE, JPEG_LOSSLESS), NO_SYNTAX)],
        0,
    )
    assert table.verdict(PACS, (CT_IMAGE_STORAGE, EXPLICIT_VR_LE), 0) is Verdict.ACCEPTED
    assert table.verdict(PACS, (CT_IMAGE_STORAGE, JPEG_LOSSLESS), 0) is Verdict.SYNTAX_REFUSED
    assert table.verdict(PACS, (CT_IMAGE_STORAGE, IMPLICIT_VR_LE), 0) is Verdict.UNKNOWN
    # per (called AE, calling AE): another sender, or another called AE, is not known
    assert table.verdict(("PACS", "WS"), (CT_IMAGE_STORAGE, EXPLICIT_VR_LE), 0) is Verdict.UNKNOWN
    assert table.verdict(("ARCH", "CT_SCANNER"), (CT_IMAGE_STORAGE, JPEG_LOSSLESS), 0) is (
        Verdict.UNKNOWN
    )


def test_a_sop_class_is_refused_when_refused_in_the_default_syntax() -> None:
    table = LearnedContexts()
    table.learn(PACS, [((MR_IMAGE_STORAGE, IMPLICIT_VR_LE), NO_SOP_CLASS)], 0)
    assert table.verdict(PACS, (MR_IMAGE_STORAGE, EXPLICIT_VR_LE), 0) is Verdict.ABSTRACT_REFUSED
    assert table.verdict(PACS, (MR_IMAGE_STORAGE, HTJ2K), 0) is Verdict.ABSTRACT_REFUSED
    # accepted since (the backend was reconfigured without coming down): taken back
    table.learn(PACS, [((MR_IMAGE_STORAGE, EXPLICIT_VR_LE), OK)], 0)
    assert table.verdict(PACS, (MR_IMAGE_STORAGE, HTJ2K), 0) is Verdict.UNKNOWN


def test_result_3_in_another_syntax_refuses_only_that_syntax() -> None:
    """Orthanc answers 3 for CT in HTJ2K (a syntax its DCMTK does not know) and takes CT in
    every syntax it knows."""
    table = LearnedContexts()
    table.learn(PACS, [((CT_IMAGE_STORAGE, HTJ2K), NO_SOP_CLASS)], 0)
    assert table.verdict(PACS, (CT_IMAGE_STORAGE, HTJ2K), 0) is Verdict.REFUSED_AS_ABSTRACT
    assert table.verdict(PACS, (CT_IMAGE_STORAGE, EXPLICIT_VR_LE), 0) is Verdict.UNKNOWN
    # A client proposing CT in HTJ2K alone hears what the backend said (3); with another
    # syntax proposed too, that one is taken.
    known = {(CT_IMAGE_STORAGE, HTJ2K): Verdict.REFUSED_AS_ABSTRACT}
    assert answer_with(known, [(CT_IMAGE_STORAGE, (HTJ2K,))]) == [(NO_SOP_CLASS, HTJ2K)]
    assert answer_with(known, [(CT_IMAGE_STORAGE, (HTJ2K, EXPLICIT_VR_LE))]) == [
        (OK, EXPLICIT_VR_LE)
    ]


def test_a_new_epoch_forgets() -> None:
    table = LearnedContexts()
    table.learn(PACS, [((CT_IMAGE_STORAGE, JPEG_LOSSLESS), NO_SYNTAX)], 0)
    assert table.verdict(PACS, (CT_IMAGE_STORAGE, JPEG_LOSSLESS), 1) is Verdict.UNKNOWN
    assert len(table) == 0
    table.learn(PACS, [((CT_IMAGE_STORAGE, JPEG_LOSSLESS), NO_SYNTAX)], 1)
    table.clear()
    assert table.verdict(PACS, (CT_IMAGE_STORAGE, JPEG_LOSSLESS), 1) is Verdict.UNKNOWN


def test_the_table_is_bounded() -> None:
    table = LearnedContexts(max_identities=3, max_pairs=5)
    for i in range(10):
        table.learn(("PACS", f"AE{i}"), [((f"1.2.3.{j}", EXPLICIT_VR_LE), OK) for j in range(9)], 0)
    assert len(table) == 3
    assert table.verdict(("PACS", "AE0"), ("1.2.3.8", EXPLICIT_VR_LE), 0) is Verdict.UNKNOWN
    assert table.verdict(("PACS", "AE9"), ("1.2.3.8", EXPLICIT_VR_LE), 0) is Verdict.ACCEPTED
    assert table.verdict(("PACS", "AE9"), ("1.2.3.0", EXPLICIT_VR_LE), 0) is Verdict.UNKNOWN


def test_combine() -> None:
    A, R3, R4, U = (
        Verdict.ACCEPTED,
        Verdict.ABSTRACT_REFUSED,
        Verdict.SYNTAX_REFUSED,
        Verdict.UNKNOWN,
    )
    assert combine([]) is U
    assert combine([R3, A]) is A
    assert combine([R3, U]) is U
    assert combine([R3, R3]) is R3
    assert combine([R3, R4]) is R4


verdicts = st.sampled_from(list(Verdict))


@given(st.lists(verdicts, max_size=6))
def test_combine_refuses_only_what_every_candidate_refused(found: list[Verdict]) -> None:
    together = combine(found)
    refused = {Verdict.ABSTRACT_REFUSED, Verdict.SYNTAX_REFUSED, Verdict.REFUSED_AS_ABSTRACT}
    assert (together in refused) == (bool(found) and all(v in refused for v in found))
    assert (together is Verdict.ACCEPTED) == (Verdict.ACCEPTED in found)


# --- negotiation from what is known ---------------------------------------------------------

LISTENER = DicomListenerConfig(ae_title="DICOMLB", max_pdu=65536)


def answer_with(
    known: dict[SyntaxPair, Verdict], contexts: list[tuple[str, tuple[str, ...]]]
) -> list[tuple[ContextResult, str]]:
    request = make_request(
        contexts=[
            (2 * i + 1, abstract, syntaxes) for i, (abstract, syntaxes) in enumerate(contexts)
        ]
    )
    ac = negotiate(request, LISTENER, known=lambda pair: known.get(pair, Verdict.UNKNOWN))
    assert isinstance(ac, AssociateAccept)
    return [(c.result, c.transfer_syntax) for c in ac.contexts]


def test_negotiation_refuses_what_the_candidates_refuse() -> None:
    known = {
        (MR_IMAGE_STORAGE, EXPLICIT_VR_LE): Verdict.ABSTRACT_REFUSED,
        (MR_IMAGE_STORAGE, IMPLICIT_VR_LE): Verdict.ABSTRACT_REFUSED,
        (CT_IMAGE_STORAGE, JPEG_LOSSLESS): Verdict.SYNTAX_REFUSED,
        (CT_IMAGE_STORAGE, HTJ2K): Verdict.SYNTAX_REFUSED,
    }
    assert answer_with(
        known,
        [
            (MR_IMAGE_STORAGE, (EXPLICIT_VR_LE, IMPLICIT_VR_LE)),
            (CT_IMAGE_STORAGE, (JPEG_LOSSLESS, HTJ2K)),
            (CT_IMAGE_STORAGE, (JPEG_LOSSLESS, IMPLICIT_VR_LE, EXPLICIT_VR_LE)),
            (VERIFICATION, (IMPLICIT_VR_LE,)),
        ],
    ) == [
        (NO_SOP_CLASS, EXPLICIT_VR_LE),
        (NO_SYNTAX, JPEG_LOSSLESS),
        (OK, IMPLICIT_VR_LE),  # the client's next choice nothing refused
        (OK, IMPLICIT_VR_LE),
    ]


def test_negotiation_accepts_what_nothing_is_known_about() -> None:
    assert answer_with({}, [(MR_IMAGE_STORAGE, (HTJ2K, EXPLICIT_VR_LE))]) == [(OK, HTJ2K)]


@settings(max_examples=200, deadline=None)
@given(
    known=st.dictionaries(
        st.tuples(
            st.sampled_from([CT_IMAGE_STORAGE, MR_IMAGE_STORAGE]),
            st.sampled_from([EXPLICIT_VR_LE, IMPLICIT_VR_LE, JPEG_LOSSLESS, HTJ2K]),
        ),
        verdicts,
    ),
    proposed=st.lists(
        st.sampled_from([EXPLICIT_VR_LE, IMPLICIT_VR_LE, JPEG_LOSSLESS, HTJ2K]),
        min_size=1,
        max_size=4,
        unique=True,
    ),
    abstract=st.sampled_from([CT_IMAGE_STORAGE, MR_IMAGE_STORAGE]),
)
def test_negotiation_accepts_exactly_the_first_syntax_not_refused(
    known: dict[SyntaxPair, Verdict], proposed: list[str], abstract: str
) -> None:
    ((result, syntax),) = answer_with(known, [(abstract, tuple(proposed))])
    says = [known.get((abstract, ts), Verdict.UNKNOWN) for ts in proposed]
    open_ = [
        ts for ts, v in zip(proposed, says, strict=True) if v in (Verdict.ACCEPTED, Verdict.UNKNOWN)
    ]
    if open_:
        assert (result, syntax) == (OK, open_[0])
    elif all(v in (Verdict.ABSTRACT_REFUSED, Verdict.REFUSED_AS_ABSTRACT) for v in says):
        assert result is NO_SOP_CLASS  # as every candidate answered: 3
    else:
        assert result is NO_SYNTAX

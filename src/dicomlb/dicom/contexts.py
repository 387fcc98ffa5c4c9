"""What backends accept: presentation contexts learned from their A-ASSOCIATE-ACs (pure).

Archives decide per AE title (dcm4chee per called AE, many per calling AE), so what one
backend said is kept per (called AE, calling AE). A backend's answer is remembered until the
snapshot is reloaded (a new table) or the backend comes back up (its health `recoveries`
count changes: it may have been reconfigured while down).

The negotiation with clients (`negotiation.negotiate`) refuses a context no candidate backend
accepts; the relay skips a backend known to refuse the message's context.
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Iterable

from dicomlb.dicom.pdu import ContextResult
from dicomlb.dicom.uids import IMPLICIT_VR_LE

SyntaxPair = tuple[str, str]  # (abstract syntax, transfer syntax)
Identity = tuple[str, str]  # (called AE, calling AE) as proposed to the backend

# Bounds: calling AE titles come from clients, so the table must not grow with them.
MAX_IDENTITIES = 1024
MAX_PAIRS = 4096  # per identity: 128 contexts per association, a few dozen associations


class Verdict(enum.Enum):
    """What is known about one (abstract syntax, transfer syntax) at a backend."""

    ACCEPTED = "accepted"
    ABSTRACT_REFUSED = "abstract_refused"  # PS3.8 9.3.3.2 result 3, in implicit VR LE
    SYNTAX_REFUSED = "syntax_refused"  # not in this transfer syntax (result 1, 2 or 4)
    # Result 3 for this transfer syntax only (Orthanc's answer for a syntax it does not know):
    # the SOP class is taken in others, but a client proposing only this one hears 3.
    REFUSED_AS_ABSTRACT = "refused_as_abstract"
    UNKNOWN = "unknown"

    # By identity, in C (Enum's own __hash__ is a Python call): a verdict is looked up in
    # a set for every message.
    __hash__ = object.__hash__


# Python 3.11's EnumType.__getattr__ makes `Verdict.X` slow to look up; every message asks
# for a verdict.
_ACCEPTED, _UNKNOWN = Verdict.ACCEPTED, Verdict.UNKNOWN
_ACCEPTANCE = ContextResult.ACCEPTANCE


class _Known:
    __slots__ = ("pairs", "refused_abstracts")

    def __init__(self) -> None:
        self.pairs: collections.OrderedDict[SyntaxPair, int] = collections.OrderedDict()
        self.refused_abstracts: collections.OrderedDict[str, None] = collections.OrderedDict()


class LearnedContexts:
    """One backend's answers to presentation contexts, per (called AE, calling AE)."""

    __slots__ = ("_epoch", "_known", "_max_identities", "_max_pairs")

    def __init__(self, *, max_identities: int = MAX_IDENTITIES, max_pairs: int = MAX_PAIRS):
        self._known: collections.OrderedDict[Identity, _Known] = collections.OrderedDict()
        self._epoch = 0
        self._max_identities = max_identities
        self._max_pairs = max_pairs

    def __len__(self) -> int:
        return len(self._known)

    def learn(
        self, identity: Identity, answers: Iterable[tuple[SyntaxPair, int]], epoch: int
    ) -> None:
        """Remember a backend's A-ASSOCIATE-AC: each proposed pair with its result
        (`ContextResult`). `epoch` is the backend's recovery count: a new one forgets all."""
        self._enter(epoch)
        known = self._known.get(identity)
        if known is None:
            known = self._known[identity] = _Known()
            while len(self._known) > self._max_identities:
                self._known.popitem(last=False)
        else:
            self._known.move_to_end(identity)
        for pair, result in answers:
            accepted = result == ContextResult.ACCEPTANCE
            known.pairs[pair] = result
            known.pairs.move_to_end(pair)
            if accepted:
                known.refused_abstracts.pop(pair[0], None)
            elif (
                result == ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED and pair[1] == IMPLICIT_VR_LE
            ):
                # Only a refusal in the default syntax, which every SCP of a SOP class takes
                # (PS3.5 10.1), refuses the SOP class: Orthanc answers 3 for a syntax it does
                # not know (HTJ2K) where it takes the SOP class in others.
                known.refused_abstracts[pair[0]] = None
                known.refused_abstracts.move_to_end(pair[0])
        while len(known.pairs) > self._max_pairs:
            known.pairs.popitem(last=False)
        while len(known.refused_abstracts) > self._max_pairs:
            known.refused_abstracts.popitem(last=False)

    def verdict(self, identity: Identity, pair: SyntaxPair, epoch: int) -> Verdict:
        """What the backend said about `pair` for this identity."""
        self._enter(epoch)
        known = self._known.get(identity)
        if known is None:
            return _UNKNOWN
        said = known.pairs.get(pair)
        if said == _ACCEPTANCE:
            return _ACCEPTED
        if pair[0] in known.refused_abstracts:
            return Verdict.ABSTRACT_REFUSED
        if said is None:
            return _UNKNOWN
        if said == ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED:
            return Verdict.REFUSED_AS_ABSTRACT
        return Verdict.SYNTAX_REFUSED

    def clear(self) -> None:
        self._known.clear()

    def _enter(self, epoch: int) -> None:
        if epoch != self._epoch:
            self._known.clear()
            self._epoch = epoch


def combine(verdicts: Iterable[Verdict]) -> Verdict:
    """What the candidate backends say together: accepted when one accepts, unknown while one
    has not said (or there is none), refused only when every one refused (the abstract
    syntax when every one refused that; refused as an abstract syntax when every one
    answered 3, for the SOP class or for this syntax)."""
    seen = set(verdicts)
    if not seen or Verdict.UNKNOWN in seen:
        return Verdict.ACCEPTED if Verdict.ACCEPTED in seen else Verdict.UNKNOWN
    if Verdict.ACCEPTED in seen:
        return Verdict.ACCEPTED
    if seen == {Verdict.ABSTRACT_REFUSED}:
        return Verdict.ABSTRACT_REFUSED
    if seen <= {Verdict.ABSTRACT_REFUSED, Verdict.REFUSED_AS_ABSTRACT}:
        return Verdict.REFUSED_AS_ABSTRACT
    return Verdict.SYNTAX_REFUSED

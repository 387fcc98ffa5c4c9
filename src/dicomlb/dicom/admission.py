"""Who may connect and associate on the DICOM listener: pure decisions, no I/O, no clock.

Two moments, each a function of the facts and the listener's counts that returns None
(admit) or why not:

- `admit_connection` when a TCP connection arrives: connections still negotiating (no
  A-ASSOCIATE-AC yet) are capped overall and per source address. Nothing has been received,
  so there is no PDU to answer with: the shell closes the connection at once.
- `admit_association` when its A-ASSOCIATE-RQ is complete: the allow-list (A-ASSOCIATE-RJ
  permanent, PS3.8 9.3.4 source 1 reason 3, calling AE title not recognized), then the
  association limits overall, per source address and per calling AE title (A-ASSOCIATE-RJ
  transient, source 3 reason 2, local limit exceeded).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from dicomlb.dicom.pdu import AssociateReject, RejectReason, reject
from dicomlb.snapshot import AllowRule, DicomListenerConfig

__all__ = [
    "ConnectionRefusal",
    "LogBudget",
    "Rejection",
    "admit_association",
    "admit_connection",
    "allowed",
    "source_address",
]

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionRefusal:
    """A connection closed on arrival: the setting whose limit it met, and the numbers."""

    setting: str
    why: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Rejection:
    """An A-ASSOCIATE-RQ refused: the A-ASSOCIATE-RJ to send and why (for the log line)."""

    answer: AssociateReject
    setting: str
    why: str


def source_address(peer_ip: str) -> IpAddress | None:
    """The client's address as an IP address (an IPv4-mapped IPv6 address, as a dual-stack
    listener reports IPv4 clients, as IPv4); None when it is not an IP address."""
    try:
        address = ipaddress.ip_address(peer_ip.partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def allowed(rules: Sequence[AllowRule], calling_aet: str, peer_ip: str) -> bool:
    """Whether a client may associate: no rules, or one rule all of whose fields match."""
    if not rules:
        return True
    address = source_address(peer_ip)
    for rule in rules:
        if rule.aet is not None and not fnmatchcase(calling_aet, rule.aet):
            continue
        if rule.network is not None and (address is None or address not in rule.network):
            continue
        return True
    return False


def admit_connection(
    config: DicomListenerConfig, *, negotiating: int, negotiating_from_ip: int
) -> ConnectionRefusal | None:
    """Why a new connection must be closed at once, if it must; the counts exclude it."""
    if negotiating >= config.max_negotiating:
        return ConnectionRefusal(
            setting="max_negotiating",
            why=f"{negotiating} connections negotiating, max_negotiating={config.max_negotiating}",
        )
    if negotiating_from_ip >= config.max_negotiating_per_ip:
        return ConnectionRefusal(
            setting="max_negotiating_per_ip",
            why=f"{negotiating_from_ip} connections from this address negotiating, "
            f"max_negotiating_per_ip={config.max_negotiating_per_ip}",
        )
    return None


def admit_association(
    config: DicomListenerConfig,
    *,
    calling_aet: str,
    peer_ip: str,
    active: int,
    active_from_ip: int,
    active_from_aet: int,
) -> Rejection | None:
    """Why an A-ASSOCIATE-RQ must be rejected, if it must. The counts are associations
    open now (this one excluded): overall, from the client's address, with its AE title."""
    if not allowed(config.allow, calling_aet, peer_ip):
        return Rejection(
            answer=reject(RejectReason.CALLING_AE_NOT_RECOGNIZED),
            setting="allow",
            why="calling AE title and address are not in listeners.dicom.allow",
        )
    busy = reject(RejectReason.LOCAL_LIMIT_EXCEEDED, transient=True)
    if active >= config.max_associations:
        return Rejection(
            answer=busy,
            setting="max_associations",
            why=f"{active} associations open, max_associations={config.max_associations}",
        )
    per_ip = config.max_associations_per_ip
    if per_ip and active_from_ip >= per_ip:
        return Rejection(
            answer=busy,
            setting="max_associations_per_ip",
            why=f"{peer_ip} has {active_from_ip} associations open, "
            f"max_associations_per_ip={per_ip}",
        )
    per_aet = config.max_associations_per_calling_aet
    if per_aet and active_from_aet >= per_aet:
        return Rejection(
            answer=busy,
            setting="max_associations_per_calling_aet",
            why=f"{calling_aet} has {active_from_aet} associations open, "
            f"max_associations_per_calling_aet={per_aet}",
        )
    return None


class LogBudget:
    """At most one log line per `period` seconds for a kind of event a flood repeats; the
    line tells how many were held back since the last one."""

    __slots__ = ("_held", "_last", "_period")

    def __init__(self, period: float = 1.0) -> None:
        self._period = period
        self._last: float | None = None
        self._held = 0

    def take(self, now: float) -> int | None:
        """None: do not log this one. Otherwise log it, with this many held back before."""
        if self._last is not None and now - self._last < self._period:
            self._held += 1
            return None
        held, self._held, self._last = self._held, 0, now
        return held

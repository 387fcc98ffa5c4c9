"""pools.py: strategies, weighted rendezvous hashing, and which backends a pool may pick."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

import pytest

from dicomlb.pools import (
    Affinity,
    BackendState,
    LeastConnections,
    Pool,
    Protocol,
    RoundRobin,
    Weighted,
    rendezvous_order,
    rendezvous_score,
)
from dicomlb.snapshot import (
    BackendConfig,
    DicomAddress,
    HealthConfig,
    HttpAddress,
    PoolConfig,
    Strategy,
)

HEALTH = HealthConfig(fall=2, rise=2)
KEYS = [f"1.2.826.0.1.3680043.8.498.{random.Random(7).getrandbits(60)}.{i}" for i in range(10_000)]


def backend(name: str, weight: int = 1) -> BackendState:
    config = BackendConfig(
        name=name,
        dicom=DicomAddress(ae_title=name.upper(), host="127.0.0.1", port=104),
        weight=weight,
    )
    return BackendState(config, HEALTH)


def backends(*names: str) -> list[BackendState]:
    return [backend(n) for n in names]


def pool(strategy: Strategy, members: Sequence[BackendState]) -> Pool:
    config = PoolConfig(
        name="pacs",
        strategy=strategy,
        key=0x0020000D if strategy is Strategy.AFFINITY else None,
        key_name="StudyInstanceUID" if strategy is Strategy.AFFINITY else None,
        health=HEALTH,
        backends=tuple(b.config for b in members),
    )
    return Pool(config, members)


def owners(members: Sequence[BackendState], keys: Sequence[str] = KEYS) -> dict[str, str]:
    chooser = Affinity()
    return {key: chooser.choose(members, key).name for key in keys}


def take_down(b: BackendState) -> None:
    while b.health.up:
        b.health.failure(0.0)


def bring_up(b: BackendState) -> None:
    while not b.health.up:
        b.health.success()


# ------------------------------------------------------------------ rendezvous


def test_rendezvous_spread_equal_weights() -> None:
    counts = Counter(owners(backends("a", "b", "c")).values())
    for name in "abc":
        assert abs(counts[name] / len(KEYS) - 1 / 3) < 0.05, counts


def test_rendezvous_spread_follows_weights() -> None:
    members = [backend("a", weight=1), backend("b", weight=2)]
    counts = Counter(owners(members).values())
    assert abs(counts["a"] / len(KEYS) - 1 / 3) < 0.03, counts
    assert abs(counts["b"] / len(KEYS) - 2 / 3) < 0.03, counts


def test_removing_a_backend_moves_only_its_keys() -> None:
    members = backends("a", "b", "c", "d")
    before = owners(members)
    after = owners([m for m in members if m.name != "c"])
    moved = {k for k in KEYS if before[k] != after[k]}
    assert moved == {k for k in KEYS if before[k] == "c"}
    # Its keys spread over the others rather than piling onto one.
    spread = Counter(after[k] for k in moved)
    assert set(spread) == {"a", "b", "d"}
    assert min(spread.values()) > len(moved) / 3 * 0.8


def test_adding_a_backend_moves_about_its_share_and_only_to_it() -> None:
    members = backends("a", "b", "c")
    before = owners(members)
    after = owners([*members, backend("d")])
    moved = [k for k in KEYS if before[k] != after[k]]
    assert all(after[k] == "d" for k in moved)
    assert abs(len(moved) / len(KEYS) - 1 / 4) < 0.05


def test_rendezvous_is_deterministic_across_calls_and_instances() -> None:
    first, second = backends("a", "b", "c"), backends("a", "b", "c")
    for key in KEYS[:200]:
        assert [rendezvous_score(key, b) for b in first] == [
            rendezvous_score(key, b) for b in second
        ]
        assert [b.name for b in rendezvous_order(key, first)] == [
            b.name for b in rendezvous_order(key, list(reversed(second)))
        ]
    assert owners(first, KEYS[:500]) == owners(second, KEYS[:500])
    assert rendezvous_score("k", first[0]) > 0


def test_affinity_fails_over_in_rendezvous_order_and_comes_back() -> None:
    members = backends("a", "b", "c")
    p = pool(Strategy.AFFINITY, members)
    for key in KEYS[:300]:
        order = rendezvous_order(key, members)
        assert p.pick(key) is order[0]
        take_down(order[0])
        assert p.pick(key) is order[1]
        take_down(order[1])
        assert p.pick(key) is order[2]
        bring_up(order[0])
        assert p.pick(key) is order[0]
        bring_up(order[1])
        assert p.pick(key, exclude=frozenset({order[0].name})) is order[1]


# ------------------------------------------------------------------ other strategies


def test_round_robin_cycles() -> None:
    members = backends("a", "b", "c")
    chooser = RoundRobin()
    assert [chooser.choose(members, "").name for _ in range(7)] == list("abcabca")


def test_round_robin_pool_skips_unavailable() -> None:
    members = backends("a", "b", "c")
    p = pool(Strategy.ROUND_ROBIN, members)
    members[1].enabled = False
    picks = [p.pick() for _ in range(6)]
    assert {b.name for b in picks if b} == {"a", "c"}
    assert Counter(b.name for b in picks if b) == {"a": 3, "c": 3}


@pytest.mark.parametrize(
    ("weights", "cycle"),
    [
        ((5, 1, 1), "aabacaa"),  # nginx's smooth weighted round robin example
        ((1, 1, 1), "abc"),
        ((2, 1), "aba"),
        ((3, 2), "ababa"),
    ],
)
def test_weighted_is_smooth_and_exact_over_a_cycle(weights: tuple[int, ...], cycle: str) -> None:
    members = [backend(chr(ord("a") + i), w) for i, w in enumerate(weights)]
    chooser = Weighted()
    picks = "".join(chooser.choose(members, "").name for _ in range(len(cycle) * 4))
    assert picks == cycle * 4
    assert Counter(picks[: len(cycle)]) == {m.name: m.weight for m in members}


def test_least_connections_by_active_per_weight() -> None:
    a, b, c = backend("a", 1), backend("b", 2), backend("c", 1)
    chooser = LeastConnections()
    a.active, b.active, c.active = 2, 3, 1
    assert chooser.choose([a, b, c], "") is c  # 1/1 < 3/2 < 2/1
    c.active = 2
    assert chooser.choose([a, b, c], "") is b  # 3/2 < 2/1
    a.active, b.active, c.active = 0, 0, 0
    assert chooser.choose([a, b, c], "") is b  # tie: the heavier backend
    b.active = 1
    assert chooser.choose([a, b, c], "") is a  # tie at 0: the first


# ------------------------------------------------------------------ Pool.pick


@pytest.mark.parametrize("strategy", list(Strategy))
def test_pick_excludes_disabled_down_and_excluded(strategy: Strategy) -> None:
    a, b, c, d = backends("a", "b", "c", "d")
    p = pool(strategy, [a, b, c, d])
    a.enabled = False
    take_down(b)
    for i in range(40):
        picked = p.pick(KEYS[i], exclude=frozenset({"c"}))
        assert picked is d
    assert p.has_available()
    assert p.pick("k", exclude=frozenset({"c", "d"})) is None
    d.enabled = False
    c.enabled = False
    assert p.pick("k") is None
    assert not p.has_available()
    bring_up(b)
    assert p.pick("k") is b
    assert p.name == "pacs"


def test_backend_state_defaults() -> None:
    b = backend("a", 3)
    assert (b.name, b.weight, b.active, b.enabled, b.available) == ("a", 3, 0, True, True)
    b.health.failure(0.0)
    assert b.available  # fall=2: one failure is not enough
    b.health.failure(0.0)
    assert not b.available


def both(name: str) -> BackendState:
    config = BackendConfig(
        name=name,
        dicom=DicomAddress(ae_title=name.upper(), host="127.0.0.1", port=104),
        http=HttpAddress(host="127.0.0.1", port=8042),
    )
    return BackendState(config, HEALTH)


def test_a_backend_with_both_addresses_has_a_health_state_per_side() -> None:
    a, b = both("a"), both("b")
    members = pool(Strategy.ROUND_ROBIN, [a, b])
    assert a.split and a.health is not a.http_health
    a.health.eject(0.0)  # its DICOM side is down, its REST side is not
    assert {members.pick() for _ in range(4)} == {b}
    assert {members.pick(protocol=Protocol.HTTP) for _ in range(4)} == {a, b}
    b.http_health.eject(0.0)
    assert members.pick(exclude=frozenset({"b"})) is None
    assert members.pick(protocol=Protocol.HTTP) is a
    assert (a.available, a.http_available, b.available, b.http_available) == (
        False,
        True,
        True,
        False,
    )
    assert a.reset_health() and b.reset_health()  # the operator's enable: both sides up
    assert a.available and a.http_available and b.available and b.http_available


def test_a_backend_with_one_address_has_one_health_state() -> None:
    one = backend("one")
    assert not one.split and one.health is one.http_health
    assert one.health_of(Protocol.HTTP) is one.health_of(Protocol.DICOM)

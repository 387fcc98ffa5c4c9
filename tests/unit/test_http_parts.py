"""The pure HTTP parts: config, routes, middlewares, affinity keys, sticky and owner tables."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from dicomlb.config import ConfigError, build_snapshot, describe
from dicomlb.http.affinity import StickyTable, request_key
from dicomlb.http.h1 import Request, RequestReader, forward_head
from dicomlb.http.middlewares import RequestContext, build_middleware, hash_password
from dicomlb.http.orthanc import OwnerTable, is_commit, is_locatable, resource_of
from dicomlb.http.routing import HttpRouter, request_path
from dicomlb.pools import BackendState, Pool
from dicomlb.providers.merge import Definition, Provider, merge
from dicomlb.snapshot import (
    BackendConfig,
    HttpAddress,
    HttpKey,
    KeyKind,
    MiddlewareConfig,
    RequestFacts,
)


def config(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "listeners": {"http": {"bind": "127.0.0.1:8080"}},
        "pools": {
            "web": {
                "backends": [
                    {"name": "a", "http": "http://127.0.0.1:8042"},
                    {"name": "b", "http": "http://10.0.0.2"},
                ]
            },
        },
        "http_routes": [{"name": "all", "pool": "web"}],
    }
    base.update(extra)
    return base


def errors(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        build_snapshot(data, "lb.yaml")
    return str(caught.value)


def test_http_config_builds_and_describes() -> None:
    snap = build_snapshot(config(), "lb.yaml")
    assert snap.http is not None and snap.http.port == 8080
    assert snap.pools["web"].backends[1].http is not None
    assert snap.pools["web"].backends[1].http.port == 80
    assert snap.pools["web"].backends[0].dicom is None
    text = describe(snap)
    assert "http listener: 127.0.0.1:8080" in text and "http://127.0.0.1:8042" in text


def test_backend_needs_an_address() -> None:
    data = config()
    data["pools"]["web"]["backends"].append({"name": "c"})
    assert 'pools.web.backends[2]: backend "c" has no address' in errors(data)


def test_dicom_routes_need_dicom_backends_and_http_routes_http_ones() -> None:
    data = config(routes=[{"name": "r", "pool": "web"}])
    assert 'routes[0].pool: pool "web" has backends without a dicom address (a, b)' in errors(data)
    data = config()
    data["pools"]["pacs"] = {"backends": [{"name": "p", "dicom": "P@h:104"}]}
    data["http_routes"] = [{"name": "r", "pool": "pacs"}]
    assert 'http_routes[0].pool: pool "pacs" has backends without an http address (p)' in (
        errors(data)
    )


def test_http_config_errors_name_the_field() -> None:
    assert "pools.web.backends[0].http" in errors(
        config(pools={"web": {"backends": [{"name": "a", "http": "https://x:1/base"}]}})
    )
    text = errors(config(middlewares={"m": {"strip_prefixes": {}}}))
    assert 'middlewares.m.strip_prefixes: unknown middleware kind "strip_prefixes"' in text
    text = errors(config(http_routes=[{"name": "r", "pool": "web", "middlewares": ["nope"]}]))
    assert 'http_routes[0].middlewares[0]: middleware "nope" does not exist' in text
    text = errors(config(http_routes=[{"name": "r", "pool": "web", "match": {"paht": "/"}}]))
    assert 'http_routes[0].match.paht: unknown match key "paht"' in text
    data = config()
    data["pools"]["web"]["http"] = {"key": "cookies:x"}
    assert "pools.web.http.key" in errors(data)
    data = config(http_routes=[{"name": "a", "pool": "web"}, {"name": "b", "pool": "web"}])
    assert 'route "b" is unreachable' in errors(data)


def facts(target: str = "/", method: str = "GET", **headers: str) -> RequestFacts:
    return RequestFacts(
        method=method,
        target=target,
        headers=tuple((k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()),
        client_ip="10.1.2.3",
    )


def test_routes_first_match_in_file_order() -> None:
    snap = build_snapshot(
        config(
            http_routes=[
                {
                    "name": "web-api",
                    "pool": "web",
                    "match": {"host": ["api.example.org", "*.api.local"], "path_prefix": "/v1/"},
                },
                {"name": "posts", "pool": "web", "match": {"method": "POST"}},
                {"name": "rx", "pool": "web", "match": {"path_regex": "^/studies/[0-9.]+$"}},
                {
                    "name": "hdr",
                    "pool": "web",
                    "match": {
                        "headers": {"X-Tenant": ["a", "b"], "Authorization": {"exists": True}},
                        "query": {"expand": {"regex": "^t"}},
                    },
                },
                {"name": "exact", "pool": "web", "match": {"path": "/system"}},
                {"name": "default", "pool": "web"},
            ]
        )
    )
    router = HttpRouter(snap.http_routes)

    def pick(f: RequestFacts) -> str:
        route = router.select(f)
        assert route is not None
        return route.name

    assert pick(facts("/v1/x", Host="API.example.org:8080")) == "web-api"
    assert pick(facts("/v1/x", Host="n1.api.local")) == "web-api"
    assert pick(facts("/v1/x", method="POST", Host="other")) == "posts"
    assert pick(facts("/studies/1.2.3")) == "rx"
    assert pick(facts("/studies/1.2.3/series")) == "default"
    assert pick(facts("/q?expand=true", X_Tenant="b", Authorization="x")) == "hdr"
    assert pick(facts("/q?expand=false", X_Tenant="b", Authorization="x")) == "default"
    assert pick(facts("/system?x=1")) == "exact"


def test_a_first_route_matching_everything_takes_every_request() -> None:
    routes = [{"name": "all", "pool": "web"}]
    router = HttpRouter(build_snapshot(config(http_routes=routes)).http_routes)
    assert router.everything is not None and router.everything.name == "all"
    assert router.select(facts("/x", Host="h")) is router.everything
    routes = [{"name": "v1", "pool": "web", "match": {"path_prefix": "/v1/"}}, *routes]
    assert HttpRouter(build_snapshot(config(http_routes=routes)).http_routes).everything is None
    # The reader normalised the target: its path is matched as it is, never decoded again
    assert request_path("/a%20b/c?x=%20") == "/a%20b/c" == facts("/a%20b/c?x=%20").path
    assert facts("/a%2Fb").path == "/a%2Fb"  # (an encoded slash let through) is no slash


def routed(routes: list[dict[str, Any]], wire: bytes) -> str | None:
    """The route the request on `wire` takes, read by the request reader as the proxy does."""
    [request, _] = RequestReader().receive_data(wire)
    assert isinstance(request, Request)
    router = HttpRouter(build_snapshot(config(http_routes=routes)).http_routes)
    route = router.select(
        facts(request.target.decode("latin-1"), request.method.decode(), Host="h")
    )
    return route.name if route is not None else None


@pytest.mark.parametrize(
    "target",
    [b"/a/../secret", b"/a/%2e%2e/secret", b"//secret", b"/./secret", b"/%73ecret", b"/SeCrEt/.."],
)
def test_routes_see_the_normalised_path(target: bytes) -> None:
    # A route guarding /secret is the one every spelling of /secret takes.
    routes = [
        {"name": "guarded", "pool": "web", "match": {"path_prefix": "/secret"}},
        {"name": "open", "pool": "web", "match": {"path_prefix": "/a/"}},
    ]
    wire = b"GET " + target + b" HTTP/1.1\r\nHost: h\r\n\r\n"
    expected = "guarded" if target != b"/SeCrEt/.." else None
    assert routed(routes, wire) == expected


def test_route_paths_are_normalised_when_compiled() -> None:
    routes = [
        {"name": "space", "pool": "web", "match": {"path_prefix": "/a b/"}},
        {"name": "tilde", "pool": "web", "match": {"path": "/%7euser/./x"}},
        {"name": "e", "pool": "web", "match": {"path": "/é"}},
    ]
    assert routed(routes, b"GET /a%20b/x HTTP/1.1\r\nHost: h\r\n\r\n") == "space"
    assert routed(routes, b"GET /~user/x HTTP/1.1\r\nHost: h\r\n\r\n") == "tilde"
    assert routed(routes, b"GET /%c3%a9 HTTP/1.1\r\nHost: h\r\n\r\n") == "e"
    bad = [{"name": "r", "pool": "web", "match": {"path_prefix": "/../x"}}]
    assert "http_routes[0].match.path_prefix" in errors(config(http_routes=bad))


def test_listener_option_encoded_slashes() -> None:
    snap = build_snapshot(config(), "lb.yaml")
    assert snap.http is not None and snap.http.encoded_slashes == "reject"
    data = config()
    data["listeners"]["http"]["encoded_slashes"] = "pass"
    snap = build_snapshot(data, "lb.yaml")
    assert snap.http is not None and snap.http.encoded_slashes == "pass"
    data["listeners"]["http"]["encoded_slashes"] = "decode"
    assert "listeners.http.encoded_slashes" in errors(data)


def run(kind: str, ctx: RequestContext, now: float = 0.0, **options: Any) -> Any:
    mw = build_middleware(MiddlewareConfig(name="m", kind=kind, options=options))
    return mw.request(ctx, now)


def ctx(target: bytes = b"/orthanc/system?x=1", **headers: str) -> RequestContext:
    return RequestContext(
        method=b"GET",
        target=target,
        headers=[(k.encode(), v.encode()) for k, v in headers.items()],
        client_ip="10.0.0.9",
        host=b"lb.example.org",
    )


def test_path_middlewares() -> None:
    c = ctx()
    run("strip_prefix", c, prefixes=["/orthanc"])
    assert c.target == b"/system?x=1"
    run("add_prefix", c, prefix="/api")
    assert c.target == b"/api/system?x=1"
    run("replace_path", c, regex="^/api/(.*)$", replacement=r"/v2/\1")
    assert c.target == b"/v2/system?x=1"


def test_a_rewritten_path_is_normalised_again() -> None:
    # A rewrite cannot make a path the routes and later middlewares did not see.
    c = ctx(b"/orthanc/x..?q=/..")
    assert run("replace_path", c, regex="^/orthanc/x", replacement="/a/b/") is None
    assert c.target == b"/a/?q=/.."  # `/a/b/..` resolved; the query untouched
    c = ctx(b"/orthanc/system")
    assert run("add_prefix", c, prefix="/a//b") is None and c.target == b"/a/b/orthanc/system"
    answer = run("replace_path", ctx(b"/x"), regex="^/x", replacement="/../y")
    assert answer is not None and answer.status == 400


def test_header_and_forwarded_middlewares() -> None:
    c = ctx(**{"X-Forwarded-For": "1.1.1.1", "X-Drop": "1"})
    run(
        "headers",
        c,
        request={"set": {"X-Set": "v"}, "remove": ["x-drop"]},
        response={"set": {"X-R": "1"}, "remove": ["Server"]},
    )
    run("forwarded", c)
    fields = dict(c.headers)
    assert fields[b"X-Set"] == b"v" and b"X-Drop" not in fields
    assert fields[b"X-Forwarded-For"] == b"1.1.1.1, 10.0.0.9"
    assert fields[b"X-Forwarded-Host"] == b"lb.example.org"
    assert fields[b"Forwarded"] == b'for=10.0.0.9;host="lb.example.org";proto=http'
    response = [(b"Server", b"x"), (b"ETag", b"e")]
    for edit in c.response_edits:
        edit(response)
    assert response == [(b"ETag", b"e"), (b"X-R", b"1")]


@pytest.mark.parametrize(
    ("kind", "options", "rewritten"),
    [
        ("forwarded", {}, True),
        ("headers", {"request": {"set": {"X-Set": "v"}}, "response": {}}, True),
        ("headers", {"request": {}, "response": {"set": {"X-R": "1"}}}, False),
        ("strip_prefix", {"prefixes": ["/orthanc"]}, True),
        ("strip_prefix", {"prefixes": ["/other"]}, False),
        ("ip_filter", {"allow": ["10.0.0.0/8"]}, False),
    ],
)
def test_head_forwarded_verbatim_only_when_no_middleware_rewrote_it(
    kind: str, options: dict[str, Any], rewritten: bool
) -> None:
    wire = (
        b"GET /orthanc/system?x=1 HTTP/1.1\r\n"
        b"Host:lb.example.org\r\nX-Forwarded-For:1.1.1.1\r\n\r\n"
    )
    [request, _] = RequestReader().receive_data(wire)
    assert isinstance(request, Request) and request.raw == wire
    c = RequestContext(
        method=request.method,
        target=request.target,
        headers=list(request.headers),
        client_ip="10.0.0.9",
        host=b"lb.example.org",
    )
    assert run(kind, c, **options) is None
    head = forward_head(request, c.target, c.headers)
    assert (head != wire) is rewritten
    if kind == "forwarded":
        assert b"X-Forwarded-For: 1.1.1.1, 10.0.0.9\r\n" in head
        assert b"X-Forwarded-Proto: http\r\n" in head


def test_basic_auth_ip_filter_max_body_rate_limit() -> None:
    users = {"alice": hash_password("s3cret", iterations=1000)}
    assert run("basic_auth", ctx(), users=users).status == 401
    good = "Basic " + base64.b64encode(b"alice:s3cret").decode()
    bad = "Basic " + base64.b64encode(b"alice:nope").decode()
    assert run("basic_auth", ctx(Authorization=bad), users=users).status == 401
    c = ctx(Authorization=good)
    assert run("basic_auth", c, users=users) is None
    assert all(k != b"Authorization" for k, _ in c.headers)  # not passed to the backend
    assert run("ip_filter", ctx(), allow=["10.0.0.0/8"], deny=[]) is None
    assert run("ip_filter", ctx(), allow=[], deny=["10.0.0.9"]).status == 403
    assert run("max_body", ctx(**{"Content-Length": "11"}), limit=10).status == 413
    mw = build_middleware(
        MiddlewareConfig(name="r", kind="rate_limit", options={"average": 2, "burst": 2})
    )
    answers = [mw.request(ctx(), now=100.0) for _ in range(3)]
    assert answers[:2] == [None, None] and answers[2].status == 429
    assert mw.request(ctx(), now=100.6) is None  # refilled at 2/s


def test_keys_sticky_and_owners() -> None:
    headers = ((b"Cookie", b"a=1; session=xyz"), (b"X-Study", b"1.2.3"))
    assert request_key(HttpKey(kind=KeyKind.COOKIE, name="session"), headers, "ip") == "xyz"
    assert request_key(HttpKey(kind=KeyKind.HEADER, name="x-study"), headers, "ip") == "1.2.3"
    assert request_key(HttpKey(kind=KeyKind.CLIENT_IP), headers, "ip") == "ip"
    assert request_key(HttpKey(kind=KeyKind.HEADER, name="x-none"), headers, "ip") is None

    snap = build_snapshot(config(), "lb.yaml")
    pool_config = snap.pools["web"]
    backends = [BackendState(b, pool_config.health) for b in pool_config.backends]
    pool = Pool(pool_config, backends)
    backends[0].active = 5
    sticky = StickyTable()
    assert sticky.place(pool, "k1").name == "b"  # least loaded first
    backends[0].active = 0
    backends[1].active = 9
    assert sticky.place(pool, "k1").name == "b"  # then it sticks
    backends[1].enabled = False
    assert sticky.place(pool, "k1").name == "a"  # unless its backend is unavailable

    owners = OwnerTable()
    learned = owners.learn(b'{"ID": "j1", "Path": "/jobs/j1"}', "b")
    assert learned == ["/jobs/j1"] and owners.owner("/jobs/j1") == "b"
    assert owners.learn(b'{"ID": "x", "Path": "/patients/x"}', "a") == []
    assert owners.learn(b"not json", "a") == []
    assert resource_of("/jobs/j1/archive") == "/jobs/j1"
    assert resource_of("/queries/q/answers/0/retrieve") == "/queries/q"
    assert resource_of("/transfers/push/t1/0") == "/transfers/push/t1"
    assert resource_of("/jobs") is None
    assert is_commit("/transfers/push/t1/commit") and not is_commit("/transfers/push/t1/0")
    # Jobs and queries can be asked for at every node; a transfer's node is computed.
    assert is_locatable("/jobs/j1") and is_locatable("/queries/q")
    assert not is_locatable("/transfers/push/t1")


def test_transfer_pins_agree_across_instances() -> None:
    """Two instances, each with its own sticky table and its own load, pin each
    `sender-transfer-id` to the same backend: the first placement is computed, not measured."""
    snap = build_snapshot(config(), "lb.yaml")
    pool_config = snap.pools["web"]

    def instance(busy: int) -> tuple[Pool, StickyTable]:
        backends = [BackendState(b, pool_config.health) for b in pool_config.backends]
        backends[busy].active = 50  # least load would send every new key to the other one
        return Pool(pool_config, backends), StickyTable()

    (pool_a, sticky_a), (pool_b, sticky_b) = instance(0), instance(1)
    keys = [f"transfer:{n}" for n in range(200)]
    first = {k: sticky_a.place(pool_a, k, computed=True).name for k in keys}  # type: ignore[union-attr]
    assert {k: sticky_b.place(pool_b, k, computed=True).name for k in keys} == first  # type: ignore[union-attr]
    assert 60 < sum(name == "a" for name in first.values()) < 140  # spread, not all on one
    # Later requests follow the pin, whatever the load; a gone backend moves only its keys.
    pool_a.backends[1].enabled = False
    moved = {k: sticky_a.place(pool_a, k, computed=True).name for k in keys}  # type: ignore[union-attr]
    assert all(moved[k] == "a" for k in keys)
    assert [k for k in keys if moved[k] != first[k]] == [k for k in keys if first[k] == "b"]
    pool_a.backends[1].enabled = True
    assert sticky_a.place(pool_a, keys[0], computed=True).name == "a"  # type: ignore[union-attr]


def test_instances_divide_backend_limits() -> None:
    """`instances: N` gives each instance its part of a backend's limits (at least 1), per
    pool or for all; `dicomlb check` says the figures are per instance."""
    data = config(instances=2)
    data["pools"]["web"]["backends"][0]["max_associations"] = 4  # Orthanc's 4
    data["pools"]["web"]["backends"][1]["max_associations"] = 1
    data["pools"]["web"]["http"] = {"max_connections": 9}
    snap = build_snapshot(data, "lb.yaml")
    web = snap.pools["web"]
    assert web.instances == 2
    assert [b.max_associations for b in web.backends] == [2, 1]  # 4 // 2, and floor 1
    assert web.http is not None and web.http.max_connections == 4
    text = describe(snap)
    assert "shared by 2 instances" in text and "http max connections 4 per backend" in text
    assert "max associations 2 per instance" in text
    data["pools"]["web"]["instances"] = 3  # the pool's own figure wins
    assert [b.max_associations for b in build_snapshot(data).pools["web"].backends] == [1, 1]
    one = build_snapshot(config(), "lb.yaml")
    assert one.pools["web"].instances == 1 and "per instance" not in describe(one)
    assert "instances" in errors(config(instances=0))
    provided = Definition(
        provider=Provider.API,
        name="c",
        pool="web",
        origin="api",
        backend=BackendConfig(
            name="c", http=HttpAddress(host="10.0.0.9", port=80), max_associations=4
        ),
    )
    added = merge(snap, [provided]).snapshot
    assert added.pools["web"].backends[-1].max_associations == 2  # as the file's backends

"""One path per request, compared with nginx 1.22 (Debian package): the same targets sent to
nginx (`merge_slashes on`, `proxy_pass` without a URI) and to dicomlb, both in front of one
tiny backend that echoes the target it received (and, from nginx, its `$uri`: the
normalised, decoded path nginx routed on).

A target's decision is "refused" (400) or the path routed on. nginx's is its `$uri`;
dicomlb's is the normalised path N its backend received, percent-decoded for the
comparison. Every target where the two decide differently is listed in INTENDED with the
reason; the test fails on a difference not listed, and on a listed one that went away.

Differences that hold for every target, and so are not rows: nginx forwards the client's
raw target (`/a/../b`), dicomlb forwards N (`/b`), as Envoy and HAProxy's `normalize-uri`
do, so the backend resolves the path routes and middlewares saw; N keeps reserved
characters escaped (`%20`, `%3F`) where `$uri` decodes them.
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote_to_bytes

import pytest

from tests.httppeers import NGINX_BIN, HttpBalancer, Nginx, raw_exchange
from tests.peers import LOOPBACK, free_port

pytestmark = pytest.mark.skipif(
    not Path(NGINX_BIN).exists(), reason="needs the Debian nginx package"
)


class _Echo(socketserver.StreamRequestHandler):
    """Answers each request with `target=<request target> uri=<X-Uri or ->`."""

    def handle(self) -> None:
        while True:
            line = self.rfile.readline(65536)
            if not line:
                return
            target = line.split(b" ")[1]
            uri = b"-"
            while (field := self.rfile.readline(65536)) not in (b"\r\n", b""):
                if field.lower().startswith(b"x-uri:"):
                    uri = field[6:].strip()
            body = b"target=" + target + b" uri=" + uri
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture(scope="module")
def echo() -> Iterator[int]:
    server = _EchoServer((LOOPBACK, free_port()), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture(scope="module")
def nginx(echo: int) -> Iterator[Nginx]:
    body = f"""
        merge_slashes on;
        location / {{
            proxy_pass http://{LOOPBACK}:{echo};
            proxy_set_header X-Uri $uri;
        }}
    """
    with Nginx(body) as started:
        yield started


@pytest.fixture(scope="module")
def lb(echo: int) -> Iterator[HttpBalancer]:
    config = {
        "pools": {"echo": {"backends": [{"name": "echo", "http": f"http://{LOOPBACK}:{echo}"}]}},
        "http_routes": [{"name": "all", "pool": "echo"}],
    }
    with HttpBalancer(config) as balancer:
        yield balancer


REFUSED = "refused"

# (target, why dicomlb decides differently from nginx)
INTENDED = {
    b"/a/..%2Fsecret": "encoded slash refused (nginx decodes it to a separator: /secret)",
    b"/%2Fsecret": "encoded slash refused (nginx: //secret merged to /secret)",
    b"/a%2fb": "encoded slash refused (nginx: /a/b); `encoded_slashes: pass` keeps it",
    b"/a/..%5Csecret": "encoded backslash refused (a Windows backend's separator)",
    b"/a%5c": "encoded backslash refused",
    b"/a\\..\\secret": "backslash refused (nginx on Unix: an ordinary byte)",
    b"/a/..;/secret": "dot segment behind ;params refused (Tomcat reads it as ..)",
    b"/.;/x": "dot segment behind ;params refused",
    b"/a#frag": "fragment refused (RFC 9112 3.2 has none; nginx routes on /a, forwards it)",
    b"/a%0Ab": "control character refused (nginx decodes it into its $uri)",
    b"/a%7F": "control character refused",
    b"/a%1b[2J": "control character refused",
    b"http://h/secret": "absolute-form refused (a reverse proxy's clients send origin-form)",
}

TARGETS = [
    # already normal
    b"/",
    b"/a",
    b"/a/b/c",
    b"/dicom-web/studies?limit=1&includefield=all",
    b"/a/",
    b"/a.b/c..d",
    b"/a/.../b",
    b"/.well-known/x",
    b"/a;b/c;x=1",
    b"/a~b-c_d",
    b"/a{b}|c",
    b"/a'b(c)*!$&+,=:@",
    b"/a?x=%2e%2e/../&y=%00",
    b"/a?x#y",
    # escapes
    b"/a%20b",
    b"/a%e4",
    b"/a%C3%A9",
    b"/%7E",
    b"/%7euser",
    b"/%41%42",
    b"/a%25",
    b"/a%3F",
    b"/a%23",
    b"/a%2e",
    b"/%2e",
    b"/a%2Db%5F",
    # dot segments
    b"/a/../secret",
    b"/a/%2e%2e/secret",
    b"/a/.%2E/secret",
    b"/a/%2E./secret",
    b"/./secret",
    b"/a/./b",
    b"/a/b/..",
    b"/a/b/.",
    b"/a/..",
    b"/a/b/../../c",
    b"/a/b/%2e%2e/%2E%2E/c?q=..",
    # slashes
    b"//secret",
    b"/a//b",
    b"/a///b//",
    b"//",
    b"//instances",
    # refused by both
    b"/../secret",
    b"/a/../../x",
    b"/%2e%2e",
    b"/..",
    b"/a/b%2F..%2F..%2F..%2Fx",
    b"/a%00b",
    b"/a/..%00",
    b"/a%zz",
    b"/a%2",
    b"/a%",
    b"*",
    # dicomlb refuses, nginx routes (INTENDED)
    *INTENDED,
]


def ask(port: int, target: bytes) -> tuple[int, bytes, bytes]:
    """(status, target the backend received, nginx's $uri) for a GET of `target`."""
    wire = b"GET " + target + b" HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    answer = raw_exchange(port, wire, timeout=5)
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if status != 200:
        return status, b"", b""
    received, _, uri = body.removeprefix(b"target=").partition(b" uri=")
    return status, received, uri


def test_decisions_match_nginx_but_for_the_intended_differences(
    nginx: Nginx, lb: HttpBalancer
) -> None:
    assert len(set(TARGETS)) == len(TARGETS) >= 50
    unexpected = []
    for target in TARGETS:
        status, _, uri = ask(nginx.port, target)
        theirs = uri if status == 200 else REFUSED
        assert status in (200, 400), (target, status)
        status, received, _ = ask(lb.port, target)
        assert status in (200, 400), (target, status)
        if status == 200:
            path, mark, query = received.partition(b"?")
            # the backend got N and the client's query, byte for byte
            assert mark + query == target.partition(b"?")[1] + target.partition(b"?")[2]
            ours: bytes | str = unquote_to_bytes(path)
        else:
            ours = REFUSED
        differs = ours != theirs
        if differs != (target in INTENDED):
            unexpected.append((target, ours, theirs))
        if target in INTENDED:
            assert ours == REFUSED, target  # every intended difference is a stricter one
    assert not unexpected, unexpected


def test_forwarded_target_is_the_normalised_one(lb: HttpBalancer) -> None:
    assert ask(lb.port, b"/a/%2e%2e//b/./c%7e%c3?x=/../%2e")[1] == b"/b/c~%C3?x=/../%2e"
    assert ask(lb.port, b"/plain/path?q=%20")[1] == b"/plain/path?q=%20"


def test_encoded_slashes_pass_keeps_them_encoded(echo: int) -> None:
    config = {
        "listeners": {"http": {"encoded_slashes": "pass"}},
        "pools": {"echo": {"backends": [{"name": "echo", "http": f"http://{LOOPBACK}:{echo}"}]}},
        "http_routes": [{"name": "all", "pool": "echo"}],
    }
    with HttpBalancer(config) as balancer:
        assert ask(balancer.port, b"/a/..%2fsecret")[:2] == (200, b"/a/..%2Fsecret")
        assert ask(balancer.port, b"/a/../secret")[:2] == (200, b"/secret")
        assert ask(balancer.port, b"/a\\b")[0] == 400


def test_a_refused_path_costs_only_its_own_connection(lb: HttpBalancer) -> None:
    with socket.create_connection((LOOPBACK, lb.port), timeout=5) as other:
        assert ask(lb.port, b"/../secret")[0] == 400
        other.sendall(b"GET /still/here HTTP/1.1\r\nHost: h\r\n\r\n")
        assert b"target=/still/here" in other.recv(65536)

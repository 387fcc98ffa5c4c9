"""HTTP peers for tests and benchmarks: dicomlb with an HTTP listener, a small aiohttp
backend (echo, names, websocket, chunked, slow), a raw asyncio backend for keep-alive and
framing edges, and nginx (Debian package) serving files or proxying. All on loopback, free
ports; stopped by `stop()` / the context manager."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Self

from aiohttp import WSMsgType, web

from dicomlb.app import App
from dicomlb.config import build_snapshot
from dicomlb.pools import BackendState
from tests.peers import LOOPBACK, free_port, stop_process, wait_listening

NGINX_BIN = "/usr/sbin/nginx"


class LoopThread:
    """An asyncio loop on a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: Any, timeout: float = 30) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class HttpBalancer:
    """dicomlb with `listeners.http` on a free port (and no DICOM listener unless given)."""

    def __init__(self, config: dict[str, Any]) -> None:
        listeners = config.setdefault("listeners", {})
        listeners.setdefault("http", {}).setdefault("bind", f"{LOOPBACK}:{free_port()}")
        self.snapshot = build_snapshot(config, source="<test>")
        assert self.snapshot.http is not None
        self.port = self.snapshot.http.port
        scheme = "https" if self.snapshot.http.tls is not None else "http"
        self.url = f"{scheme}://{LOOPBACK}:{self.port}"
        self.runner = LoopThread()
        self.app = App(self.snapshot)

    def start(self) -> Self:
        self.runner.call(self.app.start())
        return self

    def stop(self) -> None:
        self.runner.call(self.app.stop(), timeout=60)
        self.runner.close()

    def backend(self, name: str) -> BackendState:
        return self.app.runtime.backends[name]

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _LoopBackend:
    """A backend served from its own event-loop thread: `_start` / `_stop` run there."""

    runner: LoopThread

    async def _start(self) -> None:
        raise NotImplementedError

    async def _stop(self) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        self.runner.call(self._start())
        return self

    def stop(self) -> None:
        self.runner.call(self._stop())
        self.runner.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class WebBackend(_LoopBackend):
    """A small aiohttp backend on a free port, answering as `name`.

    `/name` → its name; `/echo` → the request body (and its sha256 in X-Sha256);
    `/job/{id}` → Orthanc's answer to a job created, `{"ID": id, "Path": "/jobs/{id}"}`;
    `/status/{n}`; `/chunked?n=&size=`; `/slow?s=`; `/ws` websocket echo; `/headers` → the
    request head as JSON; `/big?size=` → that many bytes; anything else → 200 with the
    method and path.
    """

    def __init__(
        self, name: str, port: int | None = None, *, tls: ssl.SSLContext | None = None
    ) -> None:
        self.name = name
        self.port = port or free_port()
        self.tls = tls  # a server context: the backend speaks https
        self.url = f"{'https' if tls else 'http'}://{LOOPBACK}:{self.port}"
        self.seen: list[tuple[str, str]] = []  # (method, path) of every request, in order
        self.requests = 0
        self.runner = LoopThread()
        self._site: web.AppRunner | None = None

    async def _start(self) -> None:
        app = web.Application(client_max_size=1 << 34, middlewares=[self._record])
        app.router.add_route("*", "/name", self._name)
        app.router.add_route("*", "/echo", self._echo)
        app.router.add_route("*", "/status/{n}", self._status)
        app.router.add_get("/chunked", self._chunked)
        app.router.add_get("/slow", self._slow)
        app.router.add_get("/ws", self._ws)
        app.router.add_route("*", "/headers", self._headers)
        app.router.add_get("/big", self._big)
        app.router.add_route("*", "/job/{id}", self._job)
        app.router.add_route("*", "/{tail:.*}", self._any)
        self._site = web.AppRunner(app, access_log=None)
        await self._site.setup()
        await web.TCPSite(self._site, LOOPBACK, self.port, ssl_context=self.tls).start()

    async def _stop(self) -> None:
        if self._site is not None:
            await self._site.cleanup()

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.seen.append((request.method, request.path))
        return await handler(request)

    async def _name(self, request: web.Request) -> web.Response:
        self.requests += 1
        await request.read()
        return web.Response(text=self.name)

    async def _echo(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        digest = hashlib.sha256()
        size = 0
        async for piece in request.content.iter_any():
            digest.update(piece)
            size += len(piece)
        return web.Response(text=f"{size} {digest.hexdigest()}", headers={"X-Backend": self.name})

    async def _status(self, request: web.Request) -> web.Response:
        self.requests += 1
        await request.read()
        return web.Response(status=int(request.match_info["n"]), text=self.name)

    async def _chunked(self, request: web.Request) -> web.StreamResponse:
        n = int(request.query.get("n", "3"))
        size = int(request.query.get("size", "10"))
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for i in range(n):
            await response.write(bytes([65 + i % 26]) * size)
        await response.write_eof()
        return response

    async def _slow(self, request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "1")))
        return web.Response(text=self.name)

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str(f"{self.name}:{msg.data}")
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    async def _headers(self, request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(
            {
                "path": request.path_qs,
                "method": request.method,
                "headers": list(
                    request.raw_headers
                    and [[k.decode(), v.decode()] for k, v in request.raw_headers]
                ),
            }
        )

    async def _big(self, request: web.Request) -> web.Response:
        return web.Response(body=b"x" * int(request.query.get("size", "1024")))

    async def _job(self, request: web.Request) -> web.Response:
        await request.read()
        job = request.match_info["id"]
        return web.json_response({"ID": job, "Path": f"/jobs/{job}"})

    async def _any(self, request: web.Request) -> web.Response:
        self.requests += 1
        await request.read()
        return web.Response(text=f"{self.name} {request.method} {request.path_qs}")


class RawBackend(_LoopBackend):
    """A raw asyncio HTTP/1.1 backend for the edges aiohttp hides: it closes a keep-alive
    connection idle for `keepalive` seconds, or (`close_on_reuse`) closes instead of
    answering any request after a connection's first, the way a backend closing an idle
    connection races with a request written to it. `/split-chunked` sends its chunked body's
    last chunk on its own, a moment after the rest; `/stray` sends the start of a second
    response behind its answer, in the same write, unasked. Anything else → 200 with
    "<method> <path> <body size> <body sha256>"."""

    def __init__(self, *, keepalive: float = 5.0, close_on_reuse: bool = False) -> None:
        self.keepalive = keepalive
        self.close_on_reuse = close_on_reuse
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.connections = 0
        self.answered = 0
        self.runner = LoopThread()
        self._server: asyncio.Server | None = None

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, LOOPBACK, self.port)

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        served = 0
        try:
            while True:
                try:
                    async with asyncio.timeout(self.keepalive if served else 30):
                        head = await reader.readuntil(b"\r\n\r\n")
                except (TimeoutError, asyncio.IncompleteReadError):
                    return
                if served and self.close_on_reuse:
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                body = await reader.readexactly(length) if length else b""
                served += 1
                self.answered += 1
                if path == "/split-chunked":
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
                    )
                    await writer.drain()
                    await asyncio.sleep(0.05)
                    writer.write(b"0\r\n\r\n")
                else:
                    text = f"{method} {path} {len(body)} {hashlib.sha256(body).hexdigest()}"
                    stray = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsne"
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s%s"
                        % (len(text), text.encode(), stray if path == "/stray" else b"")
                    )
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()


class Nginx:
    """nginx (Debian package) in the foreground on a free port, with `server_body` as the
    body of its `server {}` block (`{port}` is filled in); `listen_options` go on its `listen`
    line (`ssl`)."""

    def __init__(
        self,
        server_body: str,
        *,
        http_extra: str = "",
        port: int | None = None,
        listen_options: str = "",
    ):
        self.port = port or free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="nginx-"))
        self.workdir.chmod(0o755)  # workers run as nobody when started by root
        self.conf = self.workdir / "nginx.conf"
        self.conf.write_text(
            f"""
worker_processes 1;
daemon off;
pid {self.workdir}/nginx.pid;
error_log {self.workdir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {self.workdir}/body;
    proxy_temp_path {self.workdir}/proxy;
    fastcgi_temp_path {self.workdir}/fcgi;
    uwsgi_temp_path {self.workdir}/uwsgi;
    scgi_temp_path {self.workdir}/scgi;
    keepalive_requests 1000000;
    {http_extra}
    server {{
        listen {LOOPBACK}:{self.port} reuseport {listen_options};
        {server_body.replace("{port}", str(self.port))}
    }}
}}
"""
        )
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        self._process = subprocess.Popen(
            [NGINX_BIN, "-c", str(self.conf), "-p", str(self.workdir)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(self.workdir / "stderr.log", "wb"),  # noqa: SIM115
            start_new_session=True,
        )
        wait_listening(self.port, timeout=10, process=self._process, what="nginx")
        return self

    @property
    def pid(self) -> int | None:
        """The master process (its workers are its children), while running."""
        return self._process.pid if self._process is not None else None

    def stop(self) -> None:
        stop_process(self._process, timeout=5.0, graceful=True)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def raw_exchange(
    port: int, data: bytes, *, timeout: float = 5.0, read_until_close: bool = True
) -> bytes:
    """Send `data` on a fresh connection and read what comes back (until close/timeout)."""
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                piece = sock.recv(65536)
            except TimeoutError:
                break
            if not piece:
                break
            chunks.append(piece)
            if not read_until_close:
                break
        return b"".join(chunks)

"""A fault-injecting reverse proxy between the S3 clients (s3fs, boto3) and the moto server.

Every request is forwarded to moto unchanged unless a :class:`Fault` matches it (by method and
by a regular expression on the decoded path ``/<bucket>/<key>``); then, for as many matching
requests as the fault's ``times`` (all of them while it is active when ``times`` is None), the
proxy

- ``503``: answers ``503 Service Unavailable`` with S3's ``SlowDown`` error document;
- ``reset``: closes the connection without an answer (the client sees a reset);
- ``truncate``: sends the upstream status and headers, half of the body, then closes;
- ``delay``: waits ``seconds`` and then forwards the request normally.

Plain ``http.server`` and ``http.client``: one thread per client connection, a new upstream
connection per request. The proxy records each request (method, path, what it did), so a test
can tell that a fault was really hit.
"""

from __future__ import annotations

import http.client
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal
from urllib.parse import unquote, urlsplit

Kind = Literal["503", "reset", "truncate", "delay"]
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade", "te", "trailer"}
SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


@dataclass
class Fault:
    """What to do to the requests that match ``method`` (None: any) and ``path`` (a regex searched in
    the decoded ``/<bucket>/<key>`` path, query string excluded)."""

    kind: Kind
    path: str
    method: str | None = None
    times: int | None = None  # None: every matching request until removed
    seconds: float = 0.0  # delay
    after: int = 0  # matching requests let through before the fault starts
    seen: int = 0
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        """Whether this request gets the fault (counts the matching requests)."""
        if (self.method is not None and self.method != method) or re.search(self.path, path) is None:
            return False
        self.seen += 1
        if self.seen <= self.after or (self.times is not None and self.hits >= self.times):
            return False
        self.hits += 1
        return True


@dataclass
class Seen:
    method: str
    path: str
    action: str


@dataclass
class FaultProxy:
    """The proxy server; :meth:`start` returns its endpoint URL."""

    upstream: str
    endpoint: str = ""
    faults: list[Fault] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> str:
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()
        host, port = self._server.server_address[:2]
        self.endpoint = f"http://{host}:{port}"
        return self.endpoint

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def add(
        self, kind: Kind, path: str, *, method: str | None = None, times: int | None = None, seconds: float = 0.0, after: int = 0
    ) -> Fault:
        fault = Fault(kind, path, method, times, seconds, after)
        with self.lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self.lock:
            self.faults.clear()

    @contextmanager
    def fault(self, kind: Kind, path: str, **kwargs) -> Iterator[Fault]:
        """A fault active inside the ``with`` block only."""
        fault = self.add(kind, path, **kwargs)
        try:
            yield fault
        finally:
            with self.lock:
                if fault in self.faults:
                    self.faults.remove(fault)

    def choose(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.matches(method, path):
                    return fault
        return None

    def record(self, method: str, path: str, action: str) -> None:
        with self.lock:
            self.seen.append(Seen(method, path, action))

    def hits(self, action: str, path: str = "") -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.action == action and re.search(path, s.path)]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: FaultProxy

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's API)
        return None

    def do_GET(self) -> None:  # noqa: N802 (http.server's API)
        self._proxy()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _proxy(self) -> None:
        body = self._body()
        path = unquote(urlsplit(self.path).path)
        fault = self.owner.choose(self.command, path)
        action = fault.kind if fault else "forward"
        self.owner.record(self.command, path, action)
        if fault is not None and fault.kind == "503":
            self._answer(503, SLOW_DOWN, {"Content-Type": "application/xml"})
            return
        if fault is not None and fault.kind == "reset":
            self._reset()
            return
        if fault is not None and fault.kind == "delay":
            time.sleep(fault.seconds)
        status, headers, data = self._forward(body)
        if fault is not None and fault.kind == "truncate" and self.command != "HEAD" and len(data) > 1:
            self.send_response(status)
            for name, value in headers:
                if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self._reset()
            return
        self._answer(status, data, dict(headers), keep_length=self.command == "HEAD")

    def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        target = urlsplit(self.owner.upstream)
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        if body or self.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            return response.status, response.getheaders(), data
        finally:
            conn.close()

    def _answer(self, status: int, data: bytes, headers: dict[str, str], keep_length: bool = False) -> None:
        self.send_response(status)
        for name, value in headers.items():
            if name.lower() in HOP_BY_HOP or (name.lower() == "content-length" and not keep_length):
                continue
            self.send_header(name, value)
        if not keep_length:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _reset(self) -> None:
        """Close with a TCP reset (SO_LINGER 0), as a dropped connection looks to the client."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass

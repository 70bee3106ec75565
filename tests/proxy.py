"""A small HTTP proxy on 127.0.0.1 in front of a real `mlflow server`, that
delays, fails or never answers chosen requests: the faults of a slow or
broken tracking server, made on purpose."""

from __future__ import annotations

import dataclasses
import http.client
import http.server
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit


@dataclasses.dataclass
class Rule:
    """For requests whose path contains `path`: wait `delay` seconds, then
    answer `status` (None: forward to the server), or never answer (`hang`)."""

    path: str
    delay: float = 0.0
    status: int | None = None
    hang: bool = False


def request_body(request: http.server.BaseHTTPRequestHandler) -> bytes:
    """A request's body.  requests sends an empty file (say, an empty
    output.log) in chunks, without a Content-Length."""
    if 'chunked' not in request.headers.get('Transfer-Encoding', ''):
        return request.rfile.read(int(request.headers.get('Content-Length') or 0))
    chunks = []
    while size := int(request.rfile.readline().split(b';')[0], 16):
        chunks.append(request.rfile.read(size))
        request.rfile.readline()
    while request.rfile.readline() not in (b'\r\n', b'\n', b''):
        pass  # trailers
    return b''.join(chunks)


class Proxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.rules: list[Rule] = []
        self.seen: list[str] = []  # 'METHOD path' of every request, in order
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), self._handler())
        self._server.daemon_threads = True
        self.url = f'http://127.0.0.1:{self._server.server_address[1]}'

    def _rule(self, path: str) -> Rule | None:
        with self._lock:
            return next((r for r in self.rules if r.path in path), None)

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'

            def log_message(self, *args: object) -> None:
                pass

            def _any(self) -> None:
                body = request_body(self)
                with proxy._lock:
                    proxy.seen.append(f'{self.command} {self.path}')
                rule = proxy._rule(self.path)
                if rule and rule.hang:
                    time.sleep(3600)
                if rule and rule.delay:
                    time.sleep(rule.delay)
                if rule and rule.status:
                    self._answer(
                        rule.status,
                        b'{"error_code": "INTERNAL_ERROR", '
                        b'"message": "injected by the test proxy"}',
                        'application/json',
                    )
                    return
                self._forward(body)

            def _forward(self, body: bytes) -> None:
                conn = http.client.HTTPConnection(
                    proxy.upstream.hostname, proxy.upstream.port, timeout=120
                )
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower()
                    not in ('host', 'connection', 'transfer-encoding', 'content-length')
                }
                headers['Content-Length'] = str(len(body))
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    answer = conn.getresponse()
                    data = answer.read()
                except OSError:
                    self._answer(502, b'upstream down', 'text/plain')
                    return
                finally:
                    conn.close()
                self._answer(answer.status, data, answer.getheader('Content-Type') or '')

            def _answer(self, status: int, data: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header('Content-Type', content_type)
                self.send_header('Content-Length', str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _any

        return Handler

    def add(self, rule: Rule) -> None:
        with self._lock:
            self.rules.append(rule)

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def count(self, path: str) -> int:
        with self._lock:
            return sum(path in s for s in self.seen)


@contextmanager
def proxy_in_front_of(upstream: str) -> Iterator[Proxy]:
    proxy = Proxy(upstream)
    thread = threading.Thread(target=proxy._server.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy._server.shutdown()
        proxy._server.server_close()


@contextmanager
def silent_server() -> Iterator[tuple[str, list[int]]]:
    """A server that accepts connections and never answers; yields its URL
    and the number of connections it accepted so far (a one-item list)."""
    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    listener.listen(64)
    accepted = [0]
    held: list[socket.socket] = []
    stopping = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            accepted[0] += 1
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f'http://127.0.0.1:{listener.getsockname()[1]}', accepted
    finally:
        stopping.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()

"""The sandbox's HTTP plumbing: a threading server that reads requests and writes `Reply`s.

It knows nothing of the provider: each request goes to the sandbox's `_handle`, and the answer is
written as the `Reply` says: whole, dropped, dripped one byte at a time, or endless.
"""

from __future__ import annotations

import contextlib
import email.utils
import socket
import socketserver
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import urlsplit

from scheduler.provider._log import get_logger
from scheduler.provider.sandbox.replies import (
    HUGE_CHUNK,
    HUGE_MAX_BYTES,
    Reply,
    json_reply,
    provider_reply,
    reason,
)

__all__ = ["Served", "Server"]

log = get_logger("smsledger.sandbox")

_IDLE_TIMEOUT = 30.0  # seconds a keep-alive connection may sit idle before the sandbox closes it
_MAX_BODY = 4 * 1024 * 1024


class Served(Protocol):
    """What the server asks of the sandbox it serves (`Sandbox` in core.py)."""

    @property
    def _stopping(self) -> threading.Event: ...
    def _handle(self, method: str, path: str, raw: bytes) -> Reply: ...
    def _now(self) -> datetime: ...
    def _note_connection(self) -> None: ...


class Server(ThreadingHTTPServer):
    """The HTTP server, tracking its connections and request threads so stop() can end them."""

    daemon_threads = True
    block_on_close = False  # stop() joins the threads itself, with a deadline
    request_queue_size = 256  # bursts of new connections from benchmarks

    def __init__(self, address: tuple[str, int], sandbox: Served) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.sandbox = sandbox
        self._tracked_lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._request_threads: set[threading.Thread] = set()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would resolve the host's FQDN, which can stall on a bad resolver.
        socketserver.TCPServer.server_bind(self)
        host, port = self.socket.getsockname()[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any
    ) -> None:
        thread = threading.Thread(
            target=self.process_request_thread, args=(request, client_address), daemon=True
        )
        with self._tracked_lock:
            if isinstance(request, socket.socket):
                self._open.add(request)
            self._request_threads.add(thread)
        self.sandbox._note_connection()
        thread.start()

    def shutdown_request(self, request: socket.socket | tuple[bytes, socket.socket]) -> None:
        with self._tracked_lock:
            if isinstance(request, socket.socket):
                self._open.discard(request)
            self._request_threads.discard(threading.current_thread())
        super().shutdown_request(request)

    def handle_error(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any
    ) -> None:
        # A client that hangs up mid-answer is routine here; never print a traceback.
        log.debug("sandbox_connection_error", client=str(client_address), exc_info=True)

    def close_connections(self) -> None:
        with self._tracked_lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def join_request_threads(self, seconds: float) -> None:
        with self._tracked_lock:
            threads = list(self._request_threads)
        deadline = time.monotonic() + seconds
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0.0))


class _Handler(BaseHTTPRequestHandler):
    """One connection: reads requests (keep-alive), asks the sandbox, writes its replies."""

    server: Server
    protocol_version = "HTTP/1.1"
    server_version = "smsledger-sandbox"
    sys_version = ""
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    timeout = _IDLE_TIMEOUT

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: no line per request."""

    def date_time_string(self, timestamp: float | None = None) -> str:
        """The `Date` header, read from the sandbox's clock (`Faults.clock_offset` included)."""
        if timestamp is not None:
            return super().date_time_string(timestamp)
        try:
            now = self.server.sandbox._now()
        except ValueError:  # a naive test clock: the answer is a 500 already
            return super().date_time_string()
        return email.utils.format_datetime(now, usegmt=True)

    def _serve(self, method: str) -> None:
        raw = self._read_body()
        if raw is None:
            self._write(json_reply(400, {"error": "unreadable request body"}, close=True))
            return
        path = urlsplit(self.path).path
        try:
            reply = self.server.sandbox._handle(method, path, raw)
        except Exception:
            log.exception("sandbox_internal_error", method=method, path=path)
            reply = provider_reply(500)
        self._write(reply)

    def _read_body(self) -> bytes | None:
        """The request body (Content-Length or chunked); None when it cannot be framed."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        try:
            size = int(length)
        except ValueError:
            return None
        if not 0 <= size <= _MAX_BODY:
            return None
        return self.rfile.read(size)

    def _read_chunked(self) -> bytes | None:
        chunks: list[bytes] = []
        total = 0
        while True:
            try:
                size = int(self.rfile.readline(1024).split(b";")[0].strip(), 16)
            except ValueError:
                return None
            if size == 0:
                while self.rfile.readline(1024).strip():  # trailers, up to the blank line
                    pass
                return b"".join(chunks)
            total += size
            if total > _MAX_BODY:
                return None
            chunks.append(self.rfile.read(size))
            self.rfile.readline(1024)  # the CRLF closing the chunk

    def _write(self, reply: Reply) -> None:
        if reply.drop:
            self.close_connection = True
            return
        if reply.drip is not None:
            self._drip(reply)
            return
        self.send_response(reply.code, reason(reply.code))
        self.send_header("Content-Type", reply.content_type)
        if reply.endless:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(len(reply.body)))
        if reply.close:
            self.send_header("Connection", "close")
            self.close_connection = True
        if reply.endless:
            self.end_headers()
            self._write_endless(reply.body)
        else:
            self.end_headers()
            self.wfile.write(reply.body)

    def _drip(self, reply: Reply) -> None:
        """Write the whole answer, head and body, one byte every `reply.drip` seconds."""
        assert reply.drip is not None
        self.close_connection = True
        head = (
            f"{self.protocol_version} {reply.code} {reason(reply.code)}\r\n"
            f"Server: {self.version_string()}\r\n"
            f"Date: {self.date_time_string()}\r\n"
            f"Content-Type: {reply.content_type}\r\n"
            f"Content-Length: {len(reply.body)}\r\n"
            "Connection: close\r\n\r\n"
        )
        answer = head.encode("latin-1") + reply.body
        stopping = self.server.sandbox._stopping
        for index in range(len(answer)):
            if index and stopping.wait(reply.drip):
                return  # stopping: the connection is being closed anyway
            self.wfile.write(answer[index : index + 1])

    def _write_endless(self, start: bytes) -> None:
        """Write chunks until the client hangs up, the sandbox stops or HUGE_MAX_BYTES went out."""
        stopping = self.server.sandbox._stopping
        written = 0
        chunk = start
        while written < HUGE_MAX_BYTES and not stopping.is_set():
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            written += len(chunk)
            chunk = HUGE_CHUNK
        if not stopping.is_set():
            self.wfile.write(b"0\r\n\r\n")

"""The wire side of :class:`~tests.support.faultproxy.FaultProxy`: its HTTP server
and request handler.

:class:`ProxyHandler` forwards one client connection's requests to the upstream (keep-alive on
both sides), relays responses, and applies the fault the proxy draws for each request;
:class:`ProxyServer` runs one tracked thread per connection. The settings, counters and the
seeded draw live on the :class:`FaultProxy` the server points at (``server.proxy``).
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import math
import select
import socket
import threading
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

_BUF = 64 * 1024
# Hop-by-hop headers (RFC 9110 §7.6.1) are not forwarded. `Expect` is answered by the proxy itself
# (http.server sends `100 Continue`); botocore does not sign it, nor any of these.
_HOP_REQUEST = frozenset(
    {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "te", "upgrade"}
    | {"expect"}
)
_HOP_RESPONSE = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding"}
    | {"upgrade"}
)
S3_ERRORS = {
    503: ("SlowDown", "Please reduce your request rate."),
    500: ("InternalError", "We encountered an internal error. Please try again."),
}


def _connection_dropped(sock: socket.socket | None) -> bool:
    """True when an idle keep-alive socket is readable: the peer closed it (or sent junk)."""
    if sock is None:
        return False
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


def _s3_error_body(code: str, message: str, resource: str, request_id: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<Resource>{_xml_escape(resource)}</Resource><RequestId>{request_id}</RequestId>"
        f"<HostId>{request_id}</HostId></Error>"
    ).encode()


def _xml_escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class ProxyServer(ThreadingHTTPServer):
    """One thread per client connection, each tracked so that ``stop()`` can end and join it."""

    daemon_threads = True
    request_queue_size = 1024  # listen backlog: many ranks/workers connect at once
    proxy: Any  # the FaultProxy serving (typed loosely: that module imports this one)

    def process_request(self, request: Any, client_address: Any) -> None:
        t = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name=f"qms-faultproxy-conn-{client_address[1]}",
            daemon=True,
        )
        with self.proxy._lock:
            self.proxy._threads.add(t)
            self.proxy._connections += 1
        t.start()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.proxy._lock:
                self.proxy._threads.discard(threading.current_thread())

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug(
            "fault proxy: connection from %s ended with an error", client_address, exc_info=True
        )


class ProxyHandler(BaseHTTPRequestHandler):
    """Forwards one client connection's requests to the upstream, keep-alive on both sides."""

    protocol_version = "HTTP/1.1"
    # headers and body go out in separate writes: without TCP_NODELAY, Nagle's algorithm and the
    # client's delayed ACK add ~40 ms to every response
    disable_nagle_algorithm = True
    server: ProxyServer
    _upstream: http.client.HTTPConnection | None = None

    # connection lifecycle ----------------------------------------------------------------------
    def setup(self) -> None:
        proxy = self.server.proxy
        self.timeout = proxy.idle_timeout_s  # applied to the socket by StreamRequestHandler
        super().setup()
        with proxy._lock:
            proxy._handlers.add(self)
            stopping = proxy._stopping.is_set()
        if stopping:
            self.shutdown_sockets()

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self._close_upstream()
            with self.server.proxy._lock:
                self.server.proxy._handlers.discard(self)

    def shutdown_sockets(self) -> None:
        """Wakes this handler from a blocking read on either side (called by ``stop()``)."""
        for sock in (self.connection, self._upstream.sock if self._upstream else None):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _close_upstream(self) -> None:
        conn, self._upstream = self._upstream, None
        if conn is not None:
            conn.close()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("fault proxy: " + format, *args)

    # request handling --------------------------------------------------------------------------
    def _proxy(self) -> None:
        proxy = self.server.proxy
        method = self.command
        proxy._count_request(method)
        fault = proxy._draw_fault(method)
        try:
            latency = proxy.latency_s
            if latency > 0 and proxy._stopping.wait(latency):
                self._abort()
                return
            if fault == "drop":
                self._abort()
                return
            if fault == "error":
                self._read_body(None)
                self._send_error_fault(proxy.error_status)
                return
            if fault == "delay" and proxy._stopping.wait(proxy.delay_s):
                self._abort()
                return
            resp = self._forward()
            if resp is not None:
                self._relay(resp, truncate=fault == "truncate")
        except (OSError, http.client.HTTPException, ValueError):
            # the client went away, or sent something unparsable: end this connection
            log.debug("fault proxy: %s %s aborted", method, self.path, exc_info=True)
            self._abort()

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = do_OPTIONS = _proxy

    def _abort(self) -> None:
        """Closes the client connection with no (further) response bytes."""
        self.close_connection = True
        self._close_upstream()
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _has_body(self) -> bool:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return True
        return int(self.headers.get("Content-Length") or 0) > 0

    def _read_body(self, send: Callable[[bytes], object] | None) -> None:
        """Reads the request body (raw: chunked framing is passed on as is) and sends it on."""
        rfile = self.rfile

        def take(n: int) -> None:
            while n > 0:
                piece = rfile.read(min(n, _BUF))
                if not piece:
                    raise ConnectionError("client closed the connection inside the request body")
                if send is not None:
                    send(piece)
                n -= len(piece)

        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                line = rfile.readline(65537)
                if not line:
                    raise ConnectionError("client closed the connection inside a chunked body")
                if send is not None:
                    send(line)
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while True:  # trailers, then the blank line
                        line = rfile.readline(65537)
                        if send is not None:
                            send(line)
                        if line in (b"\r\n", b"\n", b""):
                            return
                take(size + 2)  # data and its CRLF
        else:
            take(int(self.headers.get("Content-Length") or 0))

    def _upstream_conn(self, fresh: bool) -> http.client.HTTPConnection:
        conn = self._upstream
        if conn is not None and (fresh or _connection_dropped(conn.sock)):
            self._close_upstream()
            conn = None
        if conn is None:
            proxy = self.server.proxy
            conn = http.client.HTTPConnection(
                proxy._upstream_host, proxy._upstream_port, timeout=proxy.upstream_timeout_s
            )
            self._upstream = conn
        return conn

    def _forward(self) -> http.client.HTTPResponse | None:
        proxy = self.server.proxy
        headers = [(k, v) for k, v in self.headers.items() if k.lower() not in _HOP_REQUEST]
        if not proxy.preserve_host:
            headers = [(k, v) for k, v in headers if k.lower() != "host"]
            headers.append(("Host", proxy._upstream_netloc))
        has_body = self._has_body()
        # a body-less GET/HEAD is re-sent once on a fresh connection if the kept-alive one failed
        attempts = 1 if has_body or self.command not in ("GET", "HEAD") else 2
        for attempt in range(attempts):
            conn = self._upstream_conn(fresh=attempt > 0)
            try:
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for k, v in headers:
                    conn.putheader(k, v)
                conn.endheaders()
                if has_body:
                    self._read_body(conn.send)
                return conn.getresponse()
            except (OSError, http.client.HTTPException) as e:
                self._close_upstream()
                if attempt + 1 < attempts:
                    continue
                log.debug("fault proxy: upstream failed: %r", e)
                if has_body:  # the client's body may be half read: the connection is unusable
                    self.close_connection = True
                self._send_simple(502, "Bad Gateway", f"upstream failed: {e!r}".encode())
                return None
        raise AssertionError("unreachable")

    def _send_simple(
        self, status: int, reason: str, body: bytes, ctype: str = "text/plain"
    ) -> None:
        self.send_response_only(status, reason)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_error_fault(self, status: int) -> None:
        code, message = S3_ERRORS[status]
        request_id = uuid.uuid4().hex[:16].upper()
        body = _s3_error_body(code, message, self.path.split("?", 1)[0], request_id)
        self.send_response_only(status, code)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-amz-request-id", request_id)
        self.send_header("Date", self.date_time_string())
        self.send_header("Server", "qms-faultproxy")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _relay(self, resp: http.client.HTTPResponse, truncate: bool) -> None:
        proxy = self.server.proxy
        sent = 0  # body bytes written to the client
        try:
            no_body = (
                self.command == "HEAD" or resp.status in (204, 304) or 100 <= resp.status < 200
            )
            length = None if resp.chunked else resp.length  # None: chunked or close-delimited
            cut: int | None = None
            if truncate:
                if no_body or not length:  # nothing to cut short: no fault after all
                    proxy._undo_fault("truncate")
                else:
                    cut = min(length - 1, int(length * proxy.truncate_fraction))
            self.send_response_only(resp.status, resp.reason)
            for k, v in resp.getheaders():
                if k.lower() not in _HOP_RESPONSE:
                    self.send_header(k, v)
            chunked = False
            if not no_body and length is None:
                if self.request_version == "HTTP/1.1":
                    chunked = True
                    self.send_header("Transfer-Encoding", "chunked")
                else:
                    self.close_connection = True
            if self.close_connection or cut is not None:
                self.send_header("Connection", "close")
            self.end_headers()
            if no_body:
                resp.read()
                return
            budget = cut if cut is not None else math.inf
            count = self.command == "GET"
            while sent < budget:
                piece = resp.read(int(min(_BUF, budget - sent)))
                if not piece:
                    break
                # counted before the write, so that a client that has the bytes sees them counted
                if count:
                    proxy._add_bytes_out(len(piece))
                try:
                    if chunked:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    else:
                        self.wfile.write(piece)
                except OSError:
                    if count:
                        proxy._add_bytes_out(-len(piece))
                    raise
                sent += len(piece)
            if cut is not None:
                self._abort()  # full Content-Length promised, `cut` bytes sent: close now
                return
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
            if length is not None and sent < length:  # the upstream itself cut the body short
                self._abort()
        finally:
            if resp.will_close or not resp.isclosed():
                self._close_upstream()

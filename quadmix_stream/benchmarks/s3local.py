"""A real S3 endpoint on the loopback interface, and a fault-injecting proxy to put in front of it.

The object-storage tests and the remote-read benchmark need an S3 API that behaves like the
real thing on the wire (SigV4-signed requests, ``Range`` GETs, XML errors, keep-alive
connections) without leaving the machine. Two pieces provide it:

* :class:`LocalS3` runs moto's S3 server (``moto.server.ThreadedMotoServer``) on
  ``127.0.0.1`` and a free port, uploads local folders to it with boto3, and hands out the
  environment variables / fsspec ``storage_options`` that point a client (in this process or in
  another one: torchrun ranks, DataLoader workers) at it.
* :class:`FaultProxy` is a threaded HTTP reverse proxy (standard library only) to put between
  the clients and that server. It forwards requests unchanged (the ``Host`` header included, so
  SigV4 signatures still verify upstream), streams responses back, adds latency, and injects
  faults with a seeded random generator: dropped connections, ``503 SlowDown`` /
  ``500 InternalError`` replies, truncated bodies (full ``Content-Length``, short body) and
  long delays. It counts requests, body bytes sent and faults injected.

Example::

    with LocalS3() as s3, FaultProxy(s3.endpoint_url, latency_s=0.02) as proxy:
        s3.upload_dir("corpus/", "s3://bucket/corpus")
        env = {**os.environ, **s3.env(proxy.endpoint_url)}  # for a child process
        fs = fsspec.filesystem("s3", **s3.storage_options(proxy.endpoint_url))
        proxy.faults = {"drop": 0.1}

moto keeps its buckets in process-global state: every :class:`LocalS3` of one process serves
the same buckets, and :meth:`LocalS3.reset` / :meth:`LocalS3.enforce_signatures` affect them all.
boto3 and moto are test dependencies (the ``dev`` extra): they are imported when used.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import math
import os
import random
import select
import socket
import threading
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from botocore.config import Config

__all__ = [
    "ACCESS_KEY",
    "FAULT_KINDS",
    "REGION",
    "SECRET_KEY",
    "FaultProxy",
    "LocalS3",
    "free_port",
    "split_s3_url",
]

log = logging.getLogger(__name__)

ACCESS_KEY = "testing"
"""Access key id that moto accepts (it checks none unless :meth:`LocalS3.enforce_signatures`)."""
SECRET_KEY = "testing"
"""Secret access key paired with :data:`ACCESS_KEY`."""
REGION = "us-east-1"
"""Region of the local endpoint (no ``LocationConstraint`` needed to create a bucket)."""
FAULT_KINDS = ("drop", "error", "truncate", "delay")
"""Fault kinds of :class:`FaultProxy`, in the order their probabilities are stacked."""

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
_S3_ERRORS = {
    503: ("SlowDown", "Please reduce your request rate."),
    500: ("InternalError", "We encountered an internal error. Please try again."),
}


def free_port(host: str = "127.0.0.1") -> int:
    """Returns a TCP port that nothing listens on right now.

    The port is free when this returns; another process may take it before the caller binds
    it. The servers here bind port 0 instead (the kernel picks, no race) and report the port.

    Args:
        host: Interface to probe.

    Returns:
        The port number.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def split_s3_url(url: str) -> tuple[str, str]:
    """Splits ``s3://bucket/some/prefix`` into ``("bucket", "some/prefix")``.

    Args:
        url: An ``s3://`` URL; the prefix may be empty.

    Returns:
        The bucket and the key prefix, without leading or trailing slashes.

    Raises:
        ValueError: If ``url`` is not an ``s3://`` URL with a bucket.
    """
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"not an s3://bucket[/prefix] URL: {url!r}")
    return parts.netloc, parts.path.strip("/")


def _check_port_free(host: str, port: int) -> None:
    # werkzeug's make_server() calls sys.exit(1) in moto's server thread when the bind fails, and
    # ThreadedMotoServer.start() then waits forever: fail here instead, with the OSError.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))


class LocalS3:
    """moto's S3 server on ``127.0.0.1``, as a context manager.

    Args:
        port: Port to listen on; 0 (the default) lets the kernel pick a free one, read back from
            :attr:`endpoint_url` / :attr:`port`.
        host: Interface to listen on. Keep the loopback address: nothing else is reachable.
        quiet: Raise the ``werkzeug`` logger to WARNING (if its level is unset), so that the
            server does not print a line per request.

    Example::

        with LocalS3() as s3:
            s3.upload_dir(tmp_path, "s3://data/shards")
            body = s3.client().get_object(Bucket="data", Key="shards/a.bin")["Body"].read()
    """

    def __init__(self, port: int = 0, host: str = "127.0.0.1", *, quiet: bool = True) -> None:
        self._host = host
        self._quiet = quiet
        self._requested_port = port
        self._server: Any = None
        self._port: int | None = None

    # lifecycle -----------------------------------------------------------------------------
    def start(self) -> Self:
        """Starts the server thread and waits until it accepts connections.

        Returns:
            ``self``.

        Raises:
            OSError: If an explicit ``port`` is taken.
            RuntimeError: If already started.
        """
        from moto.server import ThreadedMotoServer

        if self._quiet:  # werkzeug logs every request line at INFO unless told otherwise
            wz = logging.getLogger("werkzeug")
            if wz.level == logging.NOTSET:
                wz.setLevel(logging.WARNING)
        if self._server is not None:
            raise RuntimeError("LocalS3 already started")
        if self._requested_port:
            _check_port_free(self._host, self._requested_port)
        server = ThreadedMotoServer(ip_address=self._host, port=self._requested_port, verbose=False)
        server.start()
        self._server = server
        self._port = int(server.get_host_and_port()[1])
        return self

    def stop(self) -> None:
        """Stops the server and closes its listening socket. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.stop()
        wsgi = getattr(server, "_server", None)  # ThreadedMotoServer.stop() leaves it open
        if wsgi is not None:
            wsgi.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # addresses -----------------------------------------------------------------------------
    @property
    def port(self) -> int:
        """Port the server listens on."""
        if self._port is None:
            raise RuntimeError("LocalS3 is not started")
        return self._port

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:PORT``: the S3 endpoint (path-style addressing)."""
        return f"http://{self._host}:{self.port}"

    # clients -------------------------------------------------------------------------------
    def env(self, endpoint_url: str | None = None) -> dict[str, str]:
        """Environment variables that point an S3 client process at this server.

        Merge them over ``os.environ`` for a child process. boto3 reads ``AWS_ENDPOINT_URL``
        (botocore's "configured endpoint URLs"); so does s3fs, which passes no endpoint of its
        own when given none, and aiobotocore then resolves it like botocore (checked with
        s3fs 2026.2.0 / aiobotocore 3.10 in ``tests/test_s3local.py``).
        ``AWS_ENDPOINT_URL_S3`` is the S3-only form; ``FSSPEC_S3_ENDPOINT_URL`` sets the
        endpoint through fsspec's configuration (read when fsspec is imported) for older
        s3fs/aiobotocore. The caller must remove variables these do not override and that
        would interfere: ``AWS_PROFILE``, ``AWS_SESSION_TOKEN``,
        ``AWS_IGNORE_CONFIGURED_ENDPOINT_URLS``.

        Args:
            endpoint_url: Endpoint to use instead of the server's, e.g. a
                :class:`FaultProxy`'s ``endpoint_url``.

        Returns:
            Variable name to value.
        """
        url = endpoint_url or self.endpoint_url
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "AWS_ENDPOINT_URL": url,
            "AWS_ENDPOINT_URL_S3": url,
            "FSSPEC_S3_ENDPOINT_URL": url,
            # no instance-metadata look-ups (credentials and region are given)
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def storage_options(
        self, endpoint_url: str | None = None, **config_kwargs: Any
    ) -> dict[str, Any]:
        """fsspec ``storage_options`` for s3fs, independent of the environment.

        The endpoint goes in ``client_kwargs={"endpoint_url": ...}``, which every s3fs version
        passes on to the botocore client.

        Args:
            endpoint_url: Endpoint to use instead of the server's (e.g. a proxy's).
            **config_kwargs: botocore ``Config`` arguments, e.g.
                ``retries={"max_attempts": 10, "mode": "standard"}`` or ``read_timeout=1``.

        Returns:
            Keyword arguments for ``fsspec.filesystem("s3", **options)``.
        """
        options: dict[str, Any] = {
            "key": ACCESS_KEY,
            "secret": SECRET_KEY,
            "client_kwargs": {
                "endpoint_url": endpoint_url or self.endpoint_url,
                "region_name": REGION,
            },
        }
        if config_kwargs:
            options["config_kwargs"] = config_kwargs
        return options

    def client(
        self,
        endpoint_url: str | None = None,
        *,
        config: Config | None = None,
        credentials: tuple[str, str] | None = None,
    ) -> Any:
        """A boto3 S3 client for this server.

        Args:
            endpoint_url: Endpoint to use instead of the server's (e.g. a proxy's).
            config: botocore ``Config`` (retries, timeouts).
            credentials: ``(access_key_id, secret_access_key)``; defaults to ``testing``.

        Returns:
            A ``botocore.client.S3`` client.
        """
        import boto3

        key, secret = credentials or (ACCESS_KEY, SECRET_KEY)
        return boto3.client(
            "s3",
            endpoint_url=endpoint_url or self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            config=config,
        )

    def upload_dir(self, local_dir: str | os.PathLike[str], url: str) -> list[str]:
        """Uploads every file under ``local_dir`` to ``url``, creating the bucket if missing.

        Args:
            local_dir: Folder to upload; its relative paths become the keys under the prefix.
            url: ``s3://bucket`` or ``s3://bucket/prefix``.

        Returns:
            The ``s3://`` URLs of the uploaded objects, sorted.

        Raises:
            NotADirectoryError: If ``local_dir`` is not a folder.
        """
        from botocore.exceptions import ClientError

        root = Path(local_dir)
        if not root.is_dir():
            raise NotADirectoryError(str(root))
        bucket, prefix = split_s3_url(url)
        s3 = self.client()
        try:
            s3.head_bucket(Bucket=bucket)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
                raise
            s3.create_bucket(Bucket=bucket)
        urls = []
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            rel = path.relative_to(root).as_posix()
            key = f"{prefix}/{rel}" if prefix else rel
            s3.upload_file(str(path), bucket, key)
            urls.append(f"s3://{bucket}/{key}")
        return urls

    # moto controls -------------------------------------------------------------------------
    def _moto_api(self, path: str, data: bytes = b"") -> bytes:
        # not form-encoded (urllib's default type): moto reads the raw body
        req = urllib.request.Request(
            f"{self.endpoint_url}{path}",
            data=data,
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return bytes(resp.read())

    def reset(self) -> None:
        """Deletes every bucket (moto's ``/moto-api/reset``; process-wide, see module doc)."""
        self._moto_api("/moto-api/reset")

    @contextlib.contextmanager
    def enforce_signatures(self) -> Iterator[tuple[str, str]]:
        """Makes moto verify SigV4 signatures (it verifies none by default).

        Creates an IAM user allowed everything, switches moto's request authentication on
        (``/moto-api/reset-auth``) and yields that user's credentials: requests signed with
        them succeed, others fail with ``403`` (``SignatureDoesNotMatch``,
        ``InvalidAccessKeyId``). Authentication is switched off again on exit. It applies to the
        whole process's moto (every server, ``mock_aws`` too) while the block runs.

        Yields:
            ``(access_key_id, secret_access_key)`` of the IAM user.
        """
        import boto3

        iam = boto3.client(
            "iam",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )
        user = f"qms-signer-{uuid.uuid4().hex[:8]}"
        iam.create_user(UserName=user)
        iam.put_user_policy(
            UserName=user,
            PolicyName="all",
            PolicyDocument='{"Version": "2012-10-17", "Statement": '
            '[{"Effect": "Allow", "Action": "*", "Resource": "*"}]}',
        )
        key = iam.create_access_key(UserName=user)["AccessKey"]
        self._moto_api("/moto-api/reset-auth", b"0")
        try:
            yield key["AccessKeyId"], key["SecretAccessKey"]
        finally:
            self._moto_api("/moto-api/reset-auth", b"inf")
            iam.delete_access_key(UserName=user, AccessKeyId=key["AccessKeyId"])
            iam.delete_user_policy(UserName=user, PolicyName="all")
            iam.delete_user(UserName=user)


# ------------------------------------------------------------------------------------------------
# fault-injecting reverse proxy
# ------------------------------------------------------------------------------------------------


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


class _ProxyServer(ThreadingHTTPServer):
    """One thread per client connection, each tracked so that ``stop()`` can end and join it."""

    daemon_threads = True
    request_queue_size = 1024  # listen backlog: many ranks/workers connect at once
    proxy: FaultProxy

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


class _Handler(BaseHTTPRequestHandler):
    """Forwards one client connection's requests to the upstream, keep-alive on both sides."""

    protocol_version = "HTTP/1.1"
    # headers and body go out in separate writes: without TCP_NODELAY, Nagle's algorithm and the
    # client's delayed ACK add ~40 ms to every response
    disable_nagle_algorithm = True
    server: _ProxyServer
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
        code, message = _S3_ERRORS[status]
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


class FaultProxy:
    """A threaded HTTP reverse proxy on ``127.0.0.1`` that adds latency and injects faults.

    Every request is forwarded to ``upstream`` with its method, path and query, headers (``Host``
    and ``Range`` included, unchanged: SigV4 signatures made for the proxy's address verify
    upstream) and body, and the response is streamed back. Client connections are kept alive
    (HTTP/1.1) and each has its own kept-alive upstream connection.

    Faults apply to the methods in :attr:`fault_methods` (``GET`` only by default). For each
    such request one number is drawn from ``random.Random(seed)`` and compared with the stacked
    probabilities of :attr:`faults` (in :data:`FAULT_KINDS` order), until :attr:`max_faults`
    faults have been injected:

    * ``drop``: the connection is closed without any response.
    * ``error``: a ``503 SlowDown`` (or ``500 InternalError``, see :attr:`error_status`) S3 XML
      error is returned; the upstream is not asked.
    * ``truncate``: the upstream's status and headers (its full ``Content-Length``) are sent,
      then only :attr:`truncate_fraction` of the body, and the connection is closed. A
      response without a body is sent whole and not counted as a fault.
    * ``delay``: the request waits :attr:`delay_s` before it is forwarded (client read
      timeouts).

    :attr:`latency_s` is added to every request before it is forwarded (or faulted). All
    settings can be changed at run time from any thread of the owning process; clients may be
    in any process.

    Args:
        upstream: Base URL of the upstream, e.g. ``LocalS3.endpoint_url`` (``http://`` only).
        latency_s: Initial :attr:`latency_s`.
        faults: Initial :attr:`faults`.
        seed: Seed of the fault generator (see :meth:`reseed`).
        max_faults: Initial :attr:`max_faults`.
        delay_s: Initial :attr:`delay_s`.
        error_status: Initial :attr:`error_status`.
        truncate_fraction: Initial :attr:`truncate_fraction`.
        fault_methods: Initial :attr:`fault_methods`.
        port: Port to listen on; 0 lets the kernel pick.
        preserve_host: Forward the client's ``Host`` header (default). ``False`` rewrites it to
            the upstream's address, which breaks SigV4 signatures (a negative control).
        idle_timeout_s: An idle client connection is closed after this long.
        upstream_timeout_s: Socket timeout towards the upstream.
    """

    def __init__(
        self,
        upstream: str,
        *,
        latency_s: float = 0.0,
        faults: Mapping[str, float] | None = None,
        seed: int = 0,
        max_faults: int | None = None,
        delay_s: float = 5.0,
        error_status: int = 503,
        truncate_fraction: float = 0.5,
        fault_methods: Iterable[str] = ("GET",),
        port: int = 0,
        preserve_host: bool = True,
        idle_timeout_s: float = 120.0,
        upstream_timeout_s: float = 60.0,
    ) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be an http:// URL, got {upstream!r}")
        self._upstream_host = parts.hostname
        self._upstream_port = parts.port or 80
        self._upstream_netloc = parts.netloc
        self._listen_port = port
        self.preserve_host = preserve_host
        self.idle_timeout_s = idle_timeout_s
        self.upstream_timeout_s = upstream_timeout_s

        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: set[threading.Thread] = set()
        self._handlers: set[_Handler] = set()
        self._server: _ProxyServer | None = None
        self._serve_thread: threading.Thread | None = None

        self._rng = random.Random(seed)
        self._latency_s = 0.0
        self._faults: Mapping[str, float] = MappingProxyType({})
        self._max_faults: int | None = None
        self._delay_s = 0.0
        self._error_status = 503
        self._truncate_fraction = 0.5
        self._fault_methods: frozenset[str] = frozenset()
        self._requests: Counter[str] = Counter()
        self._faults_injected: Counter[str] = Counter()
        self._bytes_out = 0
        self._connections = 0

        self.latency_s = latency_s
        self.faults = faults or {}
        self.max_faults = max_faults
        self.delay_s = delay_s
        self.error_status = error_status
        self.truncate_fraction = truncate_fraction
        self.fault_methods = frozenset(fault_methods)

    # lifecycle -----------------------------------------------------------------------------
    def start(self) -> Self:
        """Binds the port and starts serving in a background thread.

        Returns:
            ``self``.

        Raises:
            RuntimeError: If already started.
        """
        if self._server is not None:
            raise RuntimeError("FaultProxy already started")
        self._stopping.clear()
        server = _ProxyServer(("127.0.0.1", self._listen_port), _Handler)
        server.proxy = self
        self._server = server
        self._serve_thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="qms-faultproxy-accept",
            daemon=True,
        )
        self._serve_thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stops accepting, closes every open connection and joins every thread. Idempotent.

        Requests in flight are cut off (their clients see a closed connection); sleeps for
        latency and delay faults end at once.

        Args:
            timeout_s: How long to wait for the connection threads.

        Raises:
            RuntimeError: If a connection thread is still alive after ``timeout_s``.
        """
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()  # returns when the accept loop has exited: no new connections
        server.server_close()
        if self._serve_thread is not None:
            self._serve_thread.join()
        with self._lock:
            handlers = list(self._handlers)
            threads = list(self._threads)
        for handler in handlers:
            handler.shutdown_sockets()
        for t in threads:
            t.join(timeout_s)
        alive = [t.name for t in threads if t.is_alive()]
        if alive:
            raise RuntimeError(f"fault proxy threads still running after stop(): {alive}")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """Port the proxy listens on."""
        if self._server is None:
            raise RuntimeError("FaultProxy is not started")
        return int(self._server.server_address[1])

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:PORT``: give it to clients instead of the upstream's URL."""
        return f"http://127.0.0.1:{self.port}"

    # settings (thread-safe) ----------------------------------------------------------------
    @property
    def latency_s(self) -> float:
        """Seconds added to every request before it is forwarded (or faulted)."""
        return self._latency_s

    @latency_s.setter
    def latency_s(self, value: float) -> None:
        self._latency_s = _non_negative("latency_s", value)

    @property
    def delay_s(self) -> float:
        """How long a ``delay`` fault holds a request."""
        return self._delay_s

    @delay_s.setter
    def delay_s(self, value: float) -> None:
        self._delay_s = _non_negative("delay_s", value)

    @property
    def faults(self) -> Mapping[str, float]:
        """Probability of each fault kind per eligible request (read-only view; assign a dict).

        Raises:
            ValueError: On assignment, for an unknown kind, a probability outside [0, 1], or
                probabilities that sum to more than 1.
        """
        return self._faults

    @faults.setter
    def faults(self, value: Mapping[str, float]) -> None:
        probs = {k: float(v) for k, v in value.items()}
        unknown = set(probs) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {FAULT_KINDS}")
        if any(not 0.0 <= p <= 1.0 for p in probs.values()) or sum(probs.values()) > 1.0 + 1e-9:
            raise ValueError(f"fault probabilities must be in [0, 1] and sum to <= 1: {probs}")
        with self._lock:
            self._faults = MappingProxyType(probs)

    @property
    def max_faults(self) -> int | None:
        """Faults to inject at most (counted in :attr:`faults_injected`); ``None``: no limit."""
        return self._max_faults

    @max_faults.setter
    def max_faults(self, value: int | None) -> None:
        if value is not None and value < 0:
            raise ValueError(f"max_faults must be >= 0 or None, got {value}")
        with self._lock:
            self._max_faults = value

    @property
    def error_status(self) -> int:
        """Status of ``error`` faults: 503 (``SlowDown``) or 500 (``InternalError``)."""
        return self._error_status

    @error_status.setter
    def error_status(self, value: int) -> None:
        if value not in _S3_ERRORS:
            raise ValueError(f"error_status must be one of {sorted(_S3_ERRORS)}, got {value}")
        self._error_status = value

    @property
    def truncate_fraction(self) -> float:
        """Share of the body a ``truncate`` fault sends (at least one byte is withheld)."""
        return self._truncate_fraction

    @truncate_fraction.setter
    def truncate_fraction(self, value: float) -> None:
        if not 0.0 <= value < 1.0:
            raise ValueError(f"truncate_fraction must be in [0, 1), got {value}")
        self._truncate_fraction = float(value)

    @property
    def fault_methods(self) -> frozenset[str]:
        """HTTP methods that faults apply to (``{"GET"}`` by default)."""
        return self._fault_methods

    @fault_methods.setter
    def fault_methods(self, value: Iterable[str]) -> None:
        self._fault_methods = frozenset(m.upper() for m in value)

    def reseed(self, seed: int) -> None:
        """Restarts the fault generator from ``seed``.

        Args:
            seed: The seed for ``random.Random``.
        """
        with self._lock:
            self._rng = random.Random(seed)

    # counters --------------------------------------------------------------------------------
    @property
    def requests(self) -> dict[str, int]:
        """Requests received, by method (faulted ones included)."""
        with self._lock:
            return dict(self._requests)

    @property
    def faults_injected(self) -> dict[str, int]:
        """Faults injected, by kind."""
        with self._lock:
            return dict(self._faults_injected)

    @property
    def bytes_out(self) -> int:
        """Response body bytes of GET requests written to clients.

        Upstream bodies only: the part of a truncated body that was sent counts, injected error
        bodies do not, nor does a piece whose write to the client failed. A piece is counted
        just before it is written, so a client that has read a body sees it counted.
        """
        with self._lock:
            return self._bytes_out

    @property
    def connections(self) -> int:
        """Client connections accepted (fewer than requests when clients keep them alive)."""
        with self._lock:
            return self._connections

    def reset_counters(self) -> None:
        """Sets :attr:`requests`, :attr:`faults_injected`, :attr:`bytes_out` and
        :attr:`connections` to zero (and so lets :attr:`max_faults` more faults happen)."""
        with self._lock:
            self._requests.clear()
            self._faults_injected.clear()
            self._bytes_out = 0
            self._connections = 0

    # used by the handler threads ---------------------------------------------------------------
    def _count_request(self, method: str) -> None:
        with self._lock:
            self._requests[method] += 1

    def _add_bytes_out(self, n: int) -> None:
        with self._lock:
            self._bytes_out += n

    def _draw_fault(self, method: str) -> str | None:
        with self._lock:
            if method not in self._fault_methods or not any(self._faults.values()):
                return None
            if (
                self._max_faults is not None
                and sum(self._faults_injected.values()) >= self._max_faults
            ):
                return None
            u = self._rng.random()
            acc = 0.0
            for kind in FAULT_KINDS:
                acc += self._faults.get(kind, 0.0)
                if u < acc:
                    self._faults_injected[kind] += 1
                    return kind
            return None

    def _undo_fault(self, kind: str) -> None:
        with self._lock:
            self._faults_injected[kind] -= 1
            if not self._faults_injected[kind]:
                del self._faults_injected[kind]


def _non_negative(name: str, value: float) -> float:
    value = float(value)
    if not value >= 0.0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value

"""A fault-injecting HTTP reverse proxy to put in front of an S3 endpoint (:class:`FaultProxy`).

A threaded reverse proxy (standard library only) between the clients and an S3 server such as
:class:`tests.support.s3local.LocalS3`. It forwards requests unchanged (the
``Host`` header included, so SigV4 signatures still verify upstream), streams responses back,
adds latency, and injects faults with a seeded random generator: dropped connections,
``503 SlowDown`` / ``500 InternalError`` replies, truncated bodies (full ``Content-Length``,
short body) and long delays. It counts requests, body bytes sent and faults injected.

This module holds the proxy's settings, counters and seeded fault draw; the HTTP server and
request handler that act on them are :mod:`.faultproxy_wire`.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from types import MappingProxyType, TracebackType
from typing import Self
from urllib.parse import urlsplit

from .faultproxy_wire import S3_ERRORS, ProxyHandler, ProxyServer

__all__ = ["FAULT_KINDS", "FaultProxy"]

FAULT_KINDS = ("drop", "error", "truncate", "delay")
"""Fault kinds of :class:`FaultProxy`, in the order their probabilities are stacked."""


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
        self._handlers: set[ProxyHandler] = set()
        self._server: ProxyServer | None = None
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
        server = ProxyServer(("127.0.0.1", self._listen_port), ProxyHandler)
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
        if value not in S3_ERRORS:
            raise ValueError(f"error_status must be one of {sorted(S3_ERRORS)}, got {value}")
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

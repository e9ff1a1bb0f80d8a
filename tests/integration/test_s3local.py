"""The local S3 harness: moto's real S3 server, and the fault-injecting proxy in front of it.

No mocks: every request goes over TCP on 127.0.0.1 from real boto3 and fsspec/s3fs clients to
moto's server, directly or through :class:`FaultProxy`. The exception types that each fault kind
raises in each client are asserted here, because the stream's retry code depends on them.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import fsspec
import pytest
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from tests.support.s3local import FaultProxy, LocalS3, free_port, split_s3_url

BUCKET = "qms-s3local"
PREFIX = "corpus"
RETRYING = {"max_attempts": 10, "mode": "standard"}
NO_RETRIES = {"max_attempts": 0, "mode": "standard"}  # botocore: max_attempts counts retries


def _blobs() -> dict[str, bytes]:
    rng = random.Random(0)
    return {
        "a.bin": rng.randbytes(300_000),
        "sub/b.bin": rng.randbytes(1_000),
        "sub/deeper/c.txt": b"hello object store\n" * 50,
        "empty.bin": b"",
    }


BLOBS = _blobs()
A = BLOBS["a.bin"]
KEY_A = f"{PREFIX}/a.bin"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3]:
    root = tmp_path_factory.mktemp("s3local")
    for rel, data in BLOBS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    with LocalS3() as server:
        urls = server.upload_dir(root, f"s3://{BUCKET}/{PREFIX}")
        assert urls == sorted(f"s3://{BUCKET}/{PREFIX}/{rel}" for rel in BLOBS)
        yield server


@pytest.fixture
def proxy(s3: LocalS3) -> Iterator[FaultProxy]:
    with FaultProxy(s3.endpoint_url) as p:
        yield p


def _client(s3: LocalS3, proxy: FaultProxy, retries: dict = RETRYING, **config: Any) -> Any:
    return s3.client(proxy.endpoint_url, config=Config(retries=retries, **config))


def _fs(s3: LocalS3, proxy: FaultProxy, retries: bool = True, **config: Any) -> Any:
    """An s3fs filesystem through the proxy; ``retries=False``: no botocore nor s3fs retries."""
    config["retries"] = RETRYING if retries else NO_RETRIES
    fs = fsspec.filesystem(
        "s3", skip_instance_cache=True, **s3.storage_options(proxy.endpoint_url, **config)
    )
    if not retries:
        fs.retries = 1  # s3fs's own retry loop (5 attempts by default)
    return fs


def _get(client: Any, key: str = KEY_A, **kw: Any) -> bytes:
    return bytes(client.get_object(Bucket=BUCKET, Key=key, **kw)["Body"].read())


# ---------------------------------------------------------------------------------------------
# plain reads
# ---------------------------------------------------------------------------------------------


def test_upload_dir_round_trip_with_boto3(s3: LocalS3, proxy: FaultProxy) -> None:
    direct = s3.client()
    via_proxy = _client(s3, proxy)
    for rel, data in BLOBS.items():
        assert _get(direct, f"{PREFIX}/{rel}") == data
        assert _get(via_proxy, f"{PREFIX}/{rel}") == data
    assert _get(via_proxy, Range="bytes=1000-1999") == A[1000:2000]
    assert _get(via_proxy, Range="bytes=-10") == A[-10:]
    head = via_proxy.head_object(Bucket=BUCKET, Key=KEY_A)
    assert head["ContentLength"] == len(A)
    assert proxy.requests == {"GET": len(BLOBS) + 2, "HEAD": 1}
    assert split_s3_url("s3://bkt") == ("bkt", "")
    with pytest.raises(ValueError):
        split_s3_url("/local/path")


def test_upload_dir_into_existing_bucket(s3: LocalS3, tmp_path: Path) -> None:
    (tmp_path / "one.txt").write_bytes(b"1")
    assert s3.upload_dir(tmp_path, f"s3://{BUCKET}") == [f"s3://{BUCKET}/one.txt"]
    assert s3.upload_dir(tmp_path, f"s3://{BUCKET}/again/") == [f"s3://{BUCKET}/again/one.txt"]
    assert _get(s3.client(), "again/one.txt") == b"1"
    with pytest.raises(NotADirectoryError):
        s3.upload_dir(tmp_path / "one.txt", f"s3://{BUCKET}")


def test_fsspec_reads_through_proxy(s3: LocalS3, proxy: FaultProxy) -> None:
    fs = _fs(s3, proxy)
    path = f"{BUCKET}/{KEY_A}"
    assert fs.cat_file(path) == A
    # keywords: s3fs's cat_file(path, version_id=None, start=None, end=None) takes a positional
    # second argument as the version id
    assert fs.cat_file(path, start=10, end=5_000) == A[10:5_000]
    assert fs.cat_file(f"s3://{path}", start=-100) == A[-100:]
    starts = [0, 100, 150_000, 299_990]
    ends = [10, 200, 200_000, 300_000]
    got = fs.cat_ranges([path] * 4, starts, ends)
    assert got == [A[s:e] for s, e in zip(starts, ends, strict=True)]
    with fs.open(path, "rb", block_size=64 * 1024) as f:
        assert f.read() == A
        f.seek(123_456)
        assert f.read(1_000) == A[123_456:124_456]
    for rel, data in BLOBS.items():
        assert fs.cat_file(f"{BUCKET}/{PREFIX}/{rel}") == data
    assert sorted(fs.find(f"{BUCKET}/{PREFIX}")) == sorted(f"{BUCKET}/{PREFIX}/{r}" for r in BLOBS)
    assert proxy.requests["GET"] >= 10


def test_concurrent_ranged_reads_keep_alive(s3: LocalS3, proxy: FaultProxy) -> None:
    proxy.latency_s = 0.005  # requests overlap
    client = _client(s3, proxy, max_pool_connections=16)
    ranges = [(i * 9_000, i * 9_000 + 7_000) for i in range(32)]

    def ranged(r: tuple[int, int]) -> bytes:
        return _get(client, Range=f"bytes={r[0]}-{r[1] - 1}")

    with ThreadPoolExecutor(16) as pool:
        for _ in range(2):
            assert list(pool.map(ranged, ranges)) == [A[s:e] for s, e in ranges]
    fs = _fs(s3, proxy)
    # one call first: s3fs makes its botocore client on first use, and concurrent first calls
    # each make one (~0.3 s of CPU apiece)
    assert fs.cat_file(f"{BUCKET}/{KEY_A}", start=0, end=1) == A[:1]
    got = fs.cat_ranges([f"{BUCKET}/{KEY_A}"] * len(ranges), *map(list, zip(*ranges, strict=True)))
    assert got == [A[s:e] for s, e in ranges]
    assert proxy.requests["GET"] == 3 * len(ranges) + 1
    assert proxy.bytes_out == 3 * sum(e - s for s, e in ranges) + 1
    assert proxy.connections < proxy.requests["GET"] / 2, "connections are not kept alive"


def test_sigv4_signatures_verify_through_proxy(s3: LocalS3, proxy: FaultProxy) -> None:
    with s3.enforce_signatures() as creds:
        client = s3.client(proxy.endpoint_url, credentials=creds)
        assert _get(client, Range="bytes=5-50004") == A[5:50_005]
        client.put_object(Bucket=BUCKET, Key="signed/put.bin", Body=b"p" * 3_000)
        client.upload_fileobj(_BytesReader(b"u" * 70_000), BUCKET, "signed/fileobj.bin")  # Expect
        assert _get(client, "signed/fileobj.bin") == b"u" * 70_000
        fs = fsspec.filesystem(
            "s3",
            skip_instance_cache=True,
            **{**s3.storage_options(proxy.endpoint_url), "key": creds[0], "secret": creds[1]},
        )
        fs.pipe_file(f"{BUCKET}/signed/pipe.bin", b"q" * 10_000)
        assert fs.cat_file(f"{BUCKET}/signed/pipe.bin", start=1, end=9) == b"q" * 8
        assert proxy.requests["PUT"] == 3
        # negative controls: moto does check, and a rewritten Host breaks the signature
        with pytest.raises(ClientError, match="SignatureDoesNotMatch"):
            _get(s3.client(proxy.endpoint_url, credentials=(creds[0], "wrong")))
        with FaultProxy(s3.endpoint_url, preserve_host=False) as rewriting:
            with pytest.raises(ClientError, match="SignatureDoesNotMatch"):
                _get(s3.client(rewriting.endpoint_url, credentials=creds))
    assert _get(s3.client(), "signed/put.bin") == b"p" * 3_000  # checks are off again


class _BytesReader:
    """A file-like body that is not bytes: boto3 then sends ``Expect: 100-continue``."""

    def __init__(self, data: bytes) -> None:
        self._data, self._pos = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self._data) if n is None or n < 0 else self._pos + n
        out, self._pos = self._data[self._pos : end], min(end, len(self._data))
        return out


# ---------------------------------------------------------------------------------------------
# counters, latency, determinism
# ---------------------------------------------------------------------------------------------


def test_bytes_out_counts_get_body_bytes(s3: LocalS3, proxy: FaultProxy) -> None:
    client = _client(s3, proxy, retries=NO_RETRIES)
    _get(client)
    assert proxy.bytes_out == len(A)
    _get(client, Range="bytes=0-999")
    client.head_object(Bucket=BUCKET, Key=KEY_A)
    _get(client, f"{PREFIX}/empty.bin")
    assert proxy.bytes_out == len(A) + 1_000
    proxy.faults, proxy.max_faults = {"error": 1.0}, 1
    with pytest.raises(ClientError):
        _get(client)
    assert proxy.bytes_out == len(A) + 1_000  # injected error bodies are not counted
    proxy.reset_counters()
    proxy.faults, proxy.max_faults, proxy.truncate_fraction = {"truncate": 1.0}, 1, 0.25
    with pytest.raises(ResponseStreamingError):
        _get(client)
    assert proxy.bytes_out == len(A) // 4  # what was sent of the truncated body
    assert proxy.faults_injected == {"truncate": 1}
    assert proxy.requests == {"GET": 1}


def test_latency_is_added_to_every_request(s3: LocalS3, proxy: FaultProxy) -> None:
    client = _client(s3, proxy)
    _get(client, Range="bytes=0-9")  # connection made
    proxy.latency_s = 0.05
    t0 = time.perf_counter()
    for i in range(5):
        assert _get(client, Range=f"bytes={i}-{i}") == A[i : i + 1]
    assert time.perf_counter() - t0 >= 5 * 0.05


def test_faults_are_seeded_bounded_and_get_only(s3: LocalS3, proxy: FaultProxy) -> None:
    client = _client(s3, proxy, retries=NO_RETRIES)

    def pattern() -> list[bool]:
        out = []
        for _ in range(16):
            try:
                _get(client, Range="bytes=0-0")
                out.append(True)
            except ClientError:
                out.append(False)
        return out

    proxy.faults = {"error": 0.5}
    proxy.reseed(7)
    first = pattern()
    assert 0 < first.count(False) < 16
    proxy.reseed(7)
    assert pattern() == first
    assert proxy.faults_injected == {"error": 2 * first.count(False)}

    proxy.reset_counters()
    proxy.faults, proxy.max_faults = {"drop": 1.0}, 3
    client.head_object(Bucket=BUCKET, Key=KEY_A)  # HEAD: not faulted by default
    outcomes = []
    for _ in range(6):
        try:
            _get(client, Range="bytes=0-0")
            outcomes.append(True)
        except ConnectionClosedError:
            outcomes.append(False)
    assert outcomes == [False] * 3 + [True] * 3
    assert proxy.faults_injected == {"drop": 3}
    proxy.reset_counters()
    proxy.fault_methods = {"GET", "HEAD"}
    with pytest.raises(ConnectionClosedError):
        client.head_object(Bucket=BUCKET, Key=KEY_A)

    with pytest.raises(ValueError, match="unknown"):
        proxy.faults = {"bogus": 0.1}
    with pytest.raises(ValueError, match="sum"):
        proxy.faults = {"drop": 0.6, "error": 0.6}
    with pytest.raises(ValueError):
        proxy.error_status = 404


# ---------------------------------------------------------------------------------------------
# fault kinds: what each client raises, and that retrying clients still get the right bytes
# ---------------------------------------------------------------------------------------------

FAULTS = ["drop", "error503", "error500", "truncate", "delay"]


def _kind(fault: str) -> str:
    return "error" if fault.startswith("error") else fault


def _arm(proxy: FaultProxy, fault: str, max_faults: int) -> None:
    """Counters to zero; the next ``max_faults`` GETs get ``fault``."""
    if fault.startswith("error"):
        proxy.error_status = int(fault[5:])
    proxy.reset_counters()
    proxy.delay_s = 1.0
    proxy.faults, proxy.max_faults = {_kind(fault): 1.0}, max_faults


def _timeouts(fault: str) -> dict[str, float]:
    """A read timeout shorter than the proxy's delay, for the delay fault only."""
    return {"read_timeout": 0.3} if fault == "delay" else {}


def _check_boto3_error(fault: str, exc: BaseException) -> None:
    if fault == "drop":
        assert isinstance(exc, ConnectionClosedError)
    elif fault.startswith("error"):
        assert isinstance(exc, ClientError)
        code = "SlowDown" if fault == "error503" else "InternalError"
        assert exc.response["Error"]["Code"] == code
    elif fault == "truncate":  # raised by Body.read(), not by get_object()
        assert isinstance(exc, ResponseStreamingError)
    else:
        assert isinstance(exc, ReadTimeoutError)


def _check_s3fs_error(fault: str, exc: BaseException) -> None:
    if fault == "drop":
        assert isinstance(exc, ConnectionClosedError)
    elif fault.startswith("error"):  # s3fs translates ClientError to OSError(errno, message)
        assert type(exc) is OSError
        assert isinstance(exc.__cause__, ClientError)
        assert exc.errno == (16 if fault == "error503" else 121)  # EBUSY / EREMOTEIO
    elif fault == "truncate":
        assert isinstance(exc, aiohttp.ClientPayloadError)
    else:
        assert isinstance(exc, ReadTimeoutError)


@pytest.mark.parametrize("fault", FAULTS)
def test_fault_exceptions_without_retries(s3: LocalS3, proxy: FaultProxy, fault: str) -> None:
    client = _client(s3, proxy, retries=NO_RETRIES, **_timeouts(fault))
    _arm(proxy, fault, max_faults=1)
    resp = None
    with pytest.raises(Exception) as boto_exc:  # noqa: B017 (checked below)
        resp = client.get_object(Bucket=BUCKET, Key=KEY_A)
        resp["Body"].read()
    _check_boto3_error(fault, boto_exc.value)
    assert (resp is not None) == (fault == "truncate")  # headers were fine, the body short
    assert _get(client) == A  # the next request is not faulted

    fs = _fs(s3, proxy, retries=False, **_timeouts(fault))
    assert fs.cat_file(f"{BUCKET}/{PREFIX}/sub/b.bin") == BLOBS["sub/b.bin"]  # client made
    path = f"{BUCKET}/{KEY_A}"
    # aiohttp itself re-sends an idempotent request once when the server disconnects
    n = 2 if fault == "drop" else 1
    for read in (
        lambda: fs.cat_file(path),
        lambda: fs.cat_file(path, start=5, end=100_005),
        lambda: fs.open(path, "rb").read(),
    ):
        _arm(proxy, fault, max_faults=n)
        with pytest.raises(Exception) as fs_exc:  # noqa: B017 (checked below)
            read()
        _check_s3fs_error(fault, fs_exc.value)
        assert sum(proxy.faults_injected.values()) == n
    _arm(proxy, fault, max_faults=n)
    # cat_ranges returns the exception in the list (on_error="return" by default); one range:
    # concurrent requests would share the faults
    (got,) = fs.cat_ranges([path], [1_000], [2_000])
    assert isinstance(got, Exception)
    _check_s3fs_error(fault, got)
    assert fs.cat_ranges([path], [1_000], [2_000]) == [A[1_000:2_000]]


@pytest.mark.slow
def test_retrying_clients_get_the_right_bytes(s3: LocalS3, proxy: FaultProxy) -> None:
    # one pair of clients for every fault kind: most of the time here is the retries' backoff
    client = _client(s3, proxy, read_timeout=0.3)
    fs = _fs(s3, proxy, read_timeout=0.3)  # s3fs also retries a short body itself
    path = f"{BUCKET}/{KEY_A}"
    assert fs.cat_file(path, start=0, end=1) == A[:1]  # client made
    for fault in ("drop", "error503", "truncate", "delay"):  # 500s are retried like 503s
        _arm(proxy, fault, max_faults=1)
        if fault == "truncate":
            # botocore does not retry a short body (it is read after the call returned): the
            # caller does, on ResponseStreamingError
            with pytest.raises(ResponseStreamingError):
                _get(client, Range="bytes=100-200099")
        assert _get(client, Range="bytes=100-200099") == A[100:200_100], fault
        assert proxy.faults_injected == {_kind(fault): 1}

        _arm(proxy, fault, max_faults=2)
        got = fs.cat_ranges([path] * 3, [0, 10, 20], [5_000, 6_000, 7_000])
        assert got == [A[0:5_000], A[10:6_000], A[20:7_000]], fault
        assert proxy.faults_injected == {_kind(fault): 2}
        _arm(proxy, fault, max_faults=1)
        with fs.open(path, "rb") as f:
            assert f.read() == A, fault
        assert proxy.faults_injected == {_kind(fault): 1}


# ---------------------------------------------------------------------------------------------
# other processes, shutdown
# ---------------------------------------------------------------------------------------------

CHILD = """
import os, boto3, fsspec
fs = fsspec.filesystem("s3", skip_instance_cache=True)
a = fs.cat_file("{path}", start=0, end=100)
b = boto3.client("s3").get_object(Bucket="{bucket}", Key="{key}", Range="bytes=0-99")["Body"].read()
# the same with AWS_ENDPOINT_URL alone: no service-specific variable, no fsspec configuration
del os.environ["AWS_ENDPOINT_URL_S3"]
fsspec.config.conf.pop("s3", None)
fs = fsspec.filesystem("s3", skip_instance_cache=True)
assert "endpoint_url" not in fs.client_kwargs and fs.endpoint_url is None
c = fs.cat_file("{path}", start=0, end=100)
d = boto3.client("s3").get_object(Bucket="{bucket}", Key="{key}", Range="bytes=0-99")["Body"].read()
print((a + b + c + d).hex())
"""


@pytest.mark.slow
def test_env_points_a_child_process_at_the_proxy(s3: LocalS3, proxy: FaultProxy) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FSSPEC_"))}
    env.update(s3.env(proxy.endpoint_url))
    # should a client ignore the endpoint variables, it fails here instead of leaving the machine
    env.update(HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9")
    env.update(NO_PROXY="127.0.0.1,localhost")
    script = CHILD.format(path=f"{BUCKET}/{KEY_A}", bucket=BUCKET, key=KEY_A)
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert bytes.fromhex(out.stdout.strip()) == A[:100] * 4
    assert proxy.requests == {"GET": 4}


def test_upstream_down_is_a_502(s3: LocalS3) -> None:
    with FaultProxy(f"http://127.0.0.1:{free_port()}") as p:
        with pytest.raises(ClientError) as exc:
            _get(s3.client(p.endpoint_url, config=Config(retries=NO_RETRIES)))
        assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 502
        assert p.requests == {"GET": 1}


def test_stop_ends_every_connection_thread(s3: LocalS3) -> None:
    def proxy_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith("qms-faultproxy")]

    assert proxy_threads() == []
    p = FaultProxy(s3.endpoint_url).start()
    client = _client(s3, p, retries=NO_RETRIES, max_pool_connections=8)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: _get(client, Range=f"bytes={i}-{i}"), range(16)))
    idle = socket.create_connection(("127.0.0.1", p.port))  # connected, sends nothing
    p.faults, p.delay_s = {"delay": 1.0}, 60.0
    stuck_errors: list[BaseException] = []

    def stuck() -> None:
        try:
            _get(_client(s3, p, retries=NO_RETRIES, read_timeout=120))
        except Exception as e:  # recorded, checked below
            stuck_errors.append(e)

    t = threading.Thread(target=stuck)
    t.start()
    deadline = time.monotonic() + 30
    while not p.faults_injected and time.monotonic() < deadline:
        time.sleep(0.01)
    assert p.faults_injected == {"delay": 1}
    assert len(proxy_threads()) >= 3
    port = p.port
    t0 = time.monotonic()
    p.stop()
    assert time.monotonic() - t0 < 5
    assert proxy_threads() == []
    t.join(30)
    assert len(stuck_errors) == 1 and isinstance(stuck_errors[0], ConnectionClosedError)
    assert idle.recv(1) == b""  # closed by the proxy
    idle.close()
    with pytest.raises(ConnectionRefusedError):  # the listening socket is closed too
        socket.create_connection(("127.0.0.1", port), timeout=2)
    p.stop()  # idempotent


@pytest.mark.parametrize("max_connections", [4, 64])
def test_store_connection_pool_follows_max_connections(
    s3: LocalS3, proxy: FaultProxy, max_connections: int
) -> None:
    """Range reads go out concurrently up to ``StorageConfig.max_connections``, not botocore's 10."""
    from quadmix_stream.storage.store import StorageConfig, Store

    proxy.latency_s = 0.2  # every request waits: concurrent ones need their own connections
    cfg = StorageConfig(
        max_connections=max_connections, storage_options=s3.storage_options(proxy.endpoint_url)
    )
    store = Store(f"s3://{BUCKET}/{PREFIX}", cfg)
    store.read_ranges("a.bin", [(0, 1)])  # the client's first use: credentials, signer
    proxy.reset_counters()
    ranges = [(i * 9_000, i * 9_000 + 7_000) for i in range(32)]
    assert store.read_ranges("a.bin", ranges) == [A[s:e] for s, e in ranges]
    if max_connections == 4:
        assert proxy.connections <= 4
    else:
        assert proxy.connections > 10  # more than botocore's own pool would open

"""Object storage failures end within the deadline, are retried only when a retry can heal them,
and say what is wrong: an endpoint that never answers, missing credentials, a missing bucket or
folder."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from quadmix_stream.formats.labels import LabelError, Manifest
from quadmix_stream.storage.store import StorageConfig, StorageError, Store

pytest.importorskip("s3fs")


@pytest.fixture
def silent_endpoint():
    """A loopback server that accepts connections and never sends a byte."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    t.join()
    for c in held:
        c.close()
    srv.close()


@pytest.fixture
def busy_endpoint():
    """A loopback S3 endpoint that answers every request with 503 SlowDown; counts them."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[str] = []

    class SlowDown(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            seen.append(f"{self.command} {self.path}")
            body = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
            self.send_response(503)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_HEAD = do_PUT = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), SlowDown)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", seen
    srv.shutdown()
    srv.server_close()


def _options(endpoint: str, **creds: str) -> dict:
    return {"client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}, **creds}


@pytest.fixture
def no_aws_env(monkeypatch, tmp_path):
    """No credentials anywhere botocore looks, and never the instance-metadata address."""
    import os

    for k in list(os.environ):
        if k.startswith("AWS_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))


def test_an_endpoint_that_never_answers_fails_within_the_deadline(silent_endpoint):
    cfg = StorageConfig(
        deadline_s=3,
        timeout_s=1,
        retries=8,
        backoff_s=0.1,
        storage_options=_options(silent_endpoint, key="k", secret="s"),
    )
    store = Store("s3://bucket/ds", cfg)
    t0 = time.monotonic()
    with pytest.raises(StorageError, match=r"s3://bucket/ds/quadmix.json: cannot be read") as e:
        store.read_bytes("quadmix.json")
    took = time.monotonic() - t0
    # the deadline, plus at most one attempt's timeout (connect + read) in flight when it passed
    assert took < 3 + 2 * 1 + 2, took
    assert "deadline_s 3" in str(e.value)


def test_a_503_storm_ends_after_our_retries_alone(busy_endpoint):
    """Throttling is retried with backoff, by us only: one request per attempt, not the
    client's own retries inside each of ours."""
    endpoint, seen = busy_endpoint
    cfg = StorageConfig(
        retries=4, backoff_s=0.05, storage_options=_options(endpoint, key="k", secret="s")
    )
    t0 = time.monotonic()
    with pytest.raises(StorageError, match=r"s3://bucket/ds/quadmix.json: .*5 attempt\(s\)") as e:
        Store("s3://bucket/ds", cfg).read_bytes("quadmix.json")
    assert time.monotonic() - t0 < 10
    assert "\n" not in str(e.value)
    assert len(seen) == 5, seen


def test_missing_credentials_fail_at_once_saying_what_to_set(silent_endpoint, no_aws_env):
    cfg = StorageConfig(retries=8, backoff_s=1, storage_options=_options(silent_endpoint))
    t0 = time.monotonic()
    with pytest.raises(StorageError, match=r"1 attempt\(s\).*no credentials found: set AWS_"):
        Store("s3://bucket/ds", cfg).read_bytes("quadmix.json")
    assert time.monotonic() - t0 < 5  # not 8 retries with backoff


def test_a_missing_local_folder_is_said_as_such(tmp_path):
    with pytest.raises(LabelError, match=r"the folder .*/nope does not exist$"):
        Manifest.load(tmp_path / "nope")
    with pytest.raises(LabelError, match=r"no quadmix.json; is this a labelled dataset"):
        Manifest.load(tmp_path)  # the folder exists, the manifest does not


def test_a_missing_bucket_is_said_as_such():
    pytest.importorskip("moto")
    from tests.support.s3local import LocalS3

    with LocalS3() as s3:
        s3.client().create_bucket(Bucket="there")
        cfg = StorageConfig(storage_options=s3.storage_options())
        with pytest.raises(LabelError, match=r"the bucket 'nope' does not exist"):
            Manifest.load(Store("s3://nope/ds", cfg))
        with pytest.raises(LabelError, match=r"no quadmix.json; is this a labelled dataset"):
            Manifest.load(Store("s3://there/ds", cfg))

"""A real S3 endpoint on the loopback interface (moto), to put :class:`FaultProxy` in front of.

The object-storage tests and the remote-read benchmark need an S3 API that behaves like the
real thing on the wire (SigV4-signed requests, ``Range`` GETs, XML errors, keep-alive
connections) without leaving the machine. Two pieces provide it:

* :class:`LocalS3` (here) runs moto's S3 server (``moto.server.ThreadedMotoServer``) on
  ``127.0.0.1`` and a free port, uploads local folders to it with boto3, and hands out the
  environment variables / fsspec ``storage_options`` that point a client (in this process or in
  another one: torchrun ranks, DataLoader workers) at it.
* :class:`FaultProxy` (:mod:`.faultproxy`, re-exported here) is a threaded HTTP reverse proxy
  to put between the clients and that server: latency and seeded faults (dropped connections,
  ``503 SlowDown`` / ``500 InternalError``, truncated bodies, long delays), with counters.

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
import logging
import os
import socket
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
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

from .faultproxy import FAULT_KINDS, FaultProxy

log = logging.getLogger(__name__)

ACCESS_KEY = "testing"
"""Access key id that moto accepts (it checks none unless :meth:`LocalS3.enforce_signatures`)."""
SECRET_KEY = "testing"
"""Secret access key paired with :data:`ACCESS_KEY`."""
REGION = "us-east-1"
"""Region of the local endpoint (no ``LocationConstraint`` needed to create a bucket)."""


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

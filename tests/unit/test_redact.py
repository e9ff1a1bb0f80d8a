"""No secret is printed: credentials in an object-storage URL (userinfo, a presigned URL's query)
are masked in error messages, the CLI's error line and the run's log.jsonl."""

from __future__ import annotations

import json

import pytest

from quadmix_stream.storage.redact import redact, scrub, url_secrets

SECRET = "wJalrXUtnFEMI"


@pytest.mark.core
@pytest.mark.parametrize(
    "text,shown",
    [
        ("s3://AKIAEXAMPLE:wJalrXUtnFEMI@bucket/ds", "s3://***@bucket/ds"),
        ("https://user:pa55word@host.example/a/b.bin", "https://***@host.example/a/b.bin"),
        ("https://ghp_TOKEN123@github.com/o/r", "https://***@github.com/o/r"),
        # a raw secret key with "/" in it is masked whole, not cut at its first "/"
        ("s3://AKIAEXAMPLE:wJalr/XUtn+FEMI@bucket/ds/x", "s3://***@bucket/ds/x"),
    ],
)
def test_userinfo_is_masked(text, shown):
    assert redact(text) == shown


@pytest.mark.core
def test_presigned_query_values_are_masked_and_names_kept():
    url = (
        "https://bucket.s3.amazonaws.com/ds/a.bin?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=AKIAEXAMPLE%2F20250101%2Fus-east-1%2Fs3%2Faws4_request"
        "&X-Amz-Signature=0123abcdef&X-Amz-Security-Token=FwoGZX"
    )
    assert redact(f"{url}: cannot be read") == (
        "https://bucket.s3.amazonaws.com/ds/a.bin?X-Amz-Algorithm=***&X-Amz-Credential=***"
        "&X-Amz-Signature=***&X-Amz-Security-Token=***: cannot be read"
    )
    assert redact("https://acct.blob.core.windows.net/c/x?sv=2022&sig=abc%2Bdef=") == (
        "https://acct.blob.core.windows.net/c/x?sv=***&sig=***"
    )
    assert redact("see (https://h/x?token=T0KEN).") == "see (https://h/x?token=***)."


@pytest.mark.core
def test_several_urls_in_one_message():
    msg = (
        "copy s3://K:S3CRET1@src/a to 'https://h/b?sig=S3CRET2' failed; "
        "retry https://u:S3CRET3@h/c?token=S3CRET4#part"
    )
    out = redact(msg)
    assert "S3CRET" not in out
    assert out == (
        "copy s3://***@src/a to 'https://h/b?sig=***' failed; retry https://***@h/c?token=***#part"
    )


@pytest.mark.core
@pytest.mark.parametrize(
    "text",
    [
        "",
        "train.steps: expected an integer, got 'many'",
        "/data/ds/.quadmix-label/done/unit-00001.json: no such file",
        "s3://bucket/ds/quadmix.json: no such file",
        "s3://bucket/models/bert@v2/weights.bin",  # "@" in a path is not userinfo
        "http://127.0.0.1:9000/bucket/key",
        "mail me at someone@example.com: time 12:30",
        "https://h/p?flag",  # a bare name has no value to mask
    ],
)
def test_text_without_secrets_is_unchanged(text):
    assert redact(text) == text


@pytest.mark.core
def test_redact_is_idempotent():
    once = redact("s3://K:S@b/x?sig=1 and https://t@h/y")
    assert redact(once) == once


@pytest.mark.core
def test_a_client_echoing_the_userinfo_without_the_url_is_scrubbed_too():
    # botocore takes the userinfo of s3://KEY:SECRET@bucket for part of a bucket name
    secrets = url_secrets("s3://AKIAEXAMPLE:wJalr/XUtnFEMI@bucket/ds")
    said = 'Invalid bucket name "AKIAEXAMPLE:wJalr": Bucket name must match ...; key XUtnFEMI@b'
    out = scrub(said, secrets)
    assert "wJalr" not in out and "XUtnFEMI" not in out
    assert url_secrets("s3://bucket/ds") == []


# ---------------------------------------------------------------- through the real code paths


@pytest.fixture(scope="module")
def local_s3():
    pytest.importorskip("s3fs")
    pytest.importorskip("moto")
    from tests.support.s3local import LocalS3

    with LocalS3() as s3:
        s3.client().create_bucket(Bucket="there")
        yield s3


@pytest.mark.core
@pytest.mark.parametrize(
    "url",
    [
        f"s3://AKIAEXAMPLE:{SECRET}@there/ds",
        f"s3://AKIAEXAMPLE:{SECRET[:5]}/{SECRET[5:]}@there/ds",  # a "/" in the secret
        f"gs://token{SECRET}@there/ds",
    ],
)
def test_credentials_in_a_bucket_url_are_refused_saying_where_they_go(url):
    from quadmix_stream.formats.labels import Manifest
    from quadmix_stream.storage.store import StorageError, Store

    for open_it in (Store, Manifest.load):
        with pytest.raises(StorageError) as e:
            open_it(url)
        message = str(e.value)
        assert SECRET[:5] not in message and SECRET[5:] not in message, message
        assert "\n" not in message and "://***@there/ds: credentials in the URL" in message
        assert ("AWS_ACCESS_KEY_ID" if url.startswith("s3") else "GOOGLE_APPLICATION") in message


@pytest.mark.parametrize("url", [f"s3://there/ds?X-Amz-Signature={SECRET}"])
def test_storage_errors_never_show_the_secret(local_s3, url):
    from quadmix_stream.formats.labels import LabelError, Manifest
    from quadmix_stream.storage.store import StorageConfig, StorageError, Store

    cfg = StorageConfig(storage_options=local_s3.storage_options(), retries=0, deadline_s=10)
    store = Store(url, cfg)
    assert SECRET[:5] not in repr(store)
    with pytest.raises((StorageError, FileNotFoundError)) as e:
        store.read_bytes("quadmix.json")
    assert SECRET[:5] not in str(e.value) and SECRET[5:] not in str(e.value)
    with pytest.raises(LabelError) as e:
        Manifest.load(store)
    message = str(e.value)
    assert SECRET[:5] not in message and SECRET[5:] not in message, message
    assert "\n" not in message
    assert "there" in message  # the message still names where


def test_the_cli_error_line_never_shows_the_secret(local_s3, monkeypatch, capsys):
    from quadmix_stream.cli import main

    for k, v in local_s3.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    assert main(["inspect", f"s3://AKIAEXAMPLE:{SECRET}@there/ds"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("quadmix-stream inspect: error: ") and "Traceback" not in err
    assert SECRET not in err, err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.core
def test_the_cli_redacts_what_it_prints(capsys):
    from quadmix_stream.cli import run_command
    from quadmix_stream.errors import UserError

    def fail() -> None:
        raise UserError(f"https://u:{SECRET}@h/x?sig={SECRET}: no such file")

    assert run_command("data", fail) == 2
    err = capsys.readouterr().err
    assert SECRET not in err and "https://***@h/x?sig=***: no such file" in err

    def bug() -> None:
        raise RuntimeError(f"s3://k:{SECRET}@b/x")

    assert run_command("data", bug) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and SECRET not in err


@pytest.mark.core
def test_run_log_records_are_redacted(tmp_path):
    from quadmix_stream.trainers.run_folder import log_jsonl
    from quadmix_stream.trainers.runlog import LoggingConfig, RunLogger, read_log

    logger = RunLogger(tmp_path, LoggingConfig(tensorboard=False), {})
    logger.write(
        {
            "event": "start",
            "dataset": f"s3://AKIAEXAMPLE:{SECRET}@bucket/ds",
            "evals": [f"https://h/e.jsonl?sig={SECRET}"],
            "nested": {"error": f"s3://bucket/x?X-Amz-Signature={SECRET}: denied"},
            "step": 0,
        }
    )
    log_jsonl(tmp_path / "log.jsonl", {"event": "checkpoint", "url": f"https://t:{SECRET}@h/"})
    assert SECRET not in (tmp_path / "log.jsonl").read_text()
    first, second = read_log(tmp_path / "log.jsonl")
    assert first["dataset"] == "s3://***@bucket/ds" and first["step"] == 0
    assert first["evals"] == ["https://h/e.jsonl?sig=***"]
    assert first["nested"]["error"] == "s3://bucket/x?X-Amz-Signature=***: denied"
    assert json.loads(json.dumps(second))["url"] == "https://***@h/"

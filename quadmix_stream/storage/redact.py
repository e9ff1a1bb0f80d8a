"""Secrets out of messages: the credentials an object-storage URL can carry.

A URL can hold a secret in two places: its userinfo (``s3://KEY:SECRET@bucket/x``,
``https://user:token@host/x``) and its query string (a presigned URL's ``X-Amz-Signature``,
``X-Amz-Credential``, ``X-Amz-Security-Token``; Azure's ``sig``; a ``token``). :func:`redact`
masks both wherever a URL appears in a text, so an error message, a log record or a printed
line can name the URL without the credentials. It is a pure text function (no imports from the
package), so every layer, down to the storage layer, can use it.
"""

from __future__ import annotations

import re

#: what replaces a secret
MASK = "***"

_SCHEME = r"[a-zA-Z][a-zA-Z0-9+.-]*://"
# characters that end a URL in running text: whitespace, quotes (a repr), angle brackets
_END = r"\s'\"<>`"
# userinfo: either anything up to the last "@" when the authority holds a ":" (a raw secret key,
# which often has "/" or "+" in it, is masked whole rather than cut at its first "/"), or a
# plain user name / token without "/" (``https://TOKEN@host``). A path with "@" in a later
# segment (``s3://bucket/model@v2``) is left alone.
_USERINFO = re.compile(
    rf"(?P<scheme>{_SCHEME})(?P<info>[^{_END}/?#@]*:[^{_END}?#]*|[^{_END}/?#@]+)@"
)
# a URL in running text does not end in punctuation: ``{url}: no such file``, ``(see {url}).``
_URL = re.compile(rf"{_SCHEME}[^{_END}]*[^{_END}.,;:!?)\]}}]")


def _mask_param(param: str) -> str:
    """``name=value`` → ``name=***``; a bare name (``?uploads``) or an empty value stays."""
    name, eq, value = param.partition("=")
    return f"{name}={MASK}" if eq and value else param


def _mask_query(url: str) -> str:
    head, q, rest = url.partition("?")
    if not q:
        return url
    query, hash_, fragment = rest.partition("#")
    return head + q + "&".join(_mask_param(p) for p in query.split("&")) + hash_ + fragment


def redact(text: str) -> str:
    """``text`` with every URL's userinfo replaced by ``***@`` and the value of every query
    parameter by ``***`` (names kept); text without URLs, and plain paths, come back unchanged.

    >>> redact("s3://AKIA:secret@bucket/ds/a.bin?X-Amz-Signature=abc&part=2: not found")
    's3://***@bucket/ds/a.bin?X-Amz-Signature=***&part=***: not found'
    """
    if "://" not in text:  # the common case: a message without a URL
        return text
    text = _USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)
    return _URL.sub(lambda m: _mask_query(m.group(0)), text)


def has_userinfo(url: str) -> bool:
    """Whether ``url`` starts with a scheme and carries userinfo (``s3://KEY:SECRET@bucket``)."""
    return _USERINFO.match(url) is not None


def url_secrets(url: str) -> list[str]:
    """The pieces of ``url``'s userinfo a client may echo *without* the URL around them, longest
    first (``[]`` without userinfo).

    An S3 client takes ``s3://KEY:SECRET@bucket`` for a bucket named ``KEY:SECRET@bucket`` (or,
    when the secret holds a "/", ``KEY:SEC``) and says so in its error, where :func:`redact`
    finds no URL; the caller replaces these pieces too. Pieces under 4 characters are left (they
    would mask ordinary words, and reveal next to nothing).
    """
    m = _USERINFO.match(url)
    if not m:
        return []
    info = m.group("info")
    password = info.partition(":")[2]
    parts = {info, password, *info.split("/"), *password.split("/")}
    return sorted((p for p in parts if len(p) >= 4), key=len, reverse=True)


def scrub(text: str, secrets: list[str]) -> str:
    """:func:`redact`, then every literal piece of ``secrets`` (from :func:`url_secrets`)."""
    text = redact(text)
    for s in secrets:
        text = text.replace(s, MASK)
    return text


__all__ = ["MASK", "redact", "scrub", "url_secrets"]

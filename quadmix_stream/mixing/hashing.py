"""Stable 64-bit hashing: document keys and counter-based uniforms.

Everything random in the stream comes from here, as a pure function of its inputs, so any
process computes the same draw for the same document with no shared RNG state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np
import xxhash

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)

# Salts separate the independent streams of randomness drawn from the same (seed, key, epoch).
SALT_COPIES = 0x51A7_0001
SALT_ORDER = 0x51A7_0002
SALT_SHARDS = 0x51A7_0003
SALT_SAMPLE = 0x51A7_0004
SALT_HOLDOUT = 0x51A7_0005
SALT_PROXY_POOL = 0x51A7_0006
SALT_POOL_SAMPLE = 0x51A7_0007


def doc_key(doc_id: str) -> int:
    """Stable 64-bit key of a document id (blake2b, independent of Python's hash seed)."""
    return int.from_bytes(hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest(), "little")


def text_digest(text: str) -> int:
    """The checksum the sidecar records per document: the low 32 bits of XXH3-64 of its UTF-8
    text (lone surrogates kept as they are, as a reader returns them).

    An integrity check against silent corruption (bit rot, zeroed pages, a shard edited in
    place; a changed document passes unnoticed with probability 2⁻³²), not a defence against
    tampering. About 0.4 µs for 2 KB (CRC-32 takes ~1.2 µs), so every read can afford it.
    """
    try:
        data = text.encode()
    except UnicodeEncodeError:  # a lone surrogate (from a JSON escape): rare, slower
        data = text.encode("utf-8", "surrogatepass")
    return xxhash.xxh3_64_intdigest(data) & 0xFFFFFFFF


def text_digests(texts: Iterable[str]) -> np.ndarray:
    """:func:`text_digest` of each text, as ``uint32``."""
    return np.fromiter((text_digest(t) for t in texts), dtype=np.uint32)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, vectorised over uint64 (wrapping arithmetic)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def _mix_scalar(h: int, c: int) -> int:
    """splitmix64 of (h ^ splitmix64(c·M2 + golden)) on Python ints (same as the vector path)."""
    mask = (1 << 64) - 1

    def sm(x: int) -> int:
        z = (x + 0x9E3779B97F4A7C15) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    return sm(h ^ sm((c * 0x94D049BB133111EB + 0x9E3779B97F4A7C15) & mask))


def hash64(keys: np.ndarray, *counters: int | np.ndarray) -> np.ndarray:
    """Counter-based hash of ``keys`` mixed with any number of integer counters.

    Scalar counters are folded into one 64-bit salt first (cheap, in Python), array counters
    element-wise; the order of counters matters: ``hash64(k, a, b) != hash64(k, b, a)``.
    """
    salt = 0x2545F4914F6CDD1D
    arrays = []
    for c in counters:
        if np.ndim(c) == 0:
            salt = _mix_scalar(salt, int(c) & ((1 << 64) - 1))
        else:
            arrays.append(np.asarray(c).astype(np.int64).astype(np.uint64))
    h = splitmix64(np.asarray(keys, dtype=np.uint64) ^ np.uint64(salt))
    with np.errstate(over="ignore"):
        for c64 in arrays:
            h = splitmix64(h ^ splitmix64(c64 * _M2 + _GOLDEN))
    return h


def uniform(keys: np.ndarray, *counters: int | np.ndarray) -> np.ndarray:
    """Uniforms in [0, 1) from the top 53 bits of :func:`hash64`."""
    return (hash64(keys, *counters) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))

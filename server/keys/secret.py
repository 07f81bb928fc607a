"""API key strings: how a key is made, recognised, stored and checked.

A key is ``slk_<id>_<secret>``: ``slk_`` marks it as Sluice's, ``<id>`` (12
hex digits) is public — it names the key in logs, metrics and the admin API
and finds its record — and ``<secret>`` is 32 random bytes (base64url).
Only the SHA-256 of the whole string is ever stored; the key itself is shown
once, when it is made. A fast hash is right here: a 256-bit random secret
cannot be guessed, so slowing down each check would protect nothing.

    key = new_key()                       # NewKey(id, text, hash): show `text` once
    key_id("slk_0a1b2c3d4e5f_...")        # "0a1b2c3d4e5f", or None if not a key's shape
    verify(presented, record.hash)        # constant-time comparison of the hashes
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

MARK = "slk_"
_SHAPE = re.compile(r"slk_([0-9a-f]{12})_([A-Za-z0-9_-]{20,128})")
ID_SHAPE = re.compile(r"[0-9a-f]{12}")
HASH_SHAPE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class NewKey:
    id: str
    text: str  # the key itself: shown once, never stored
    hash: str


def new_key() -> NewKey:
    key_id = secrets.token_hex(6)
    text = f"{MARK}{key_id}_{secrets.token_urlsafe(32)}"
    return NewKey(key_id, text, key_hash(text))


def key_id(presented: str) -> str | None:
    """The public id of a string shaped like a key, else None."""
    match = _SHAPE.fullmatch(presented)
    return match.group(1) if match else None


def key_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def verify(presented: str, stored_hash: str) -> bool:
    """Does ``presented`` hash to ``stored_hash``? Compared in constant time."""
    return hmac.compare_digest(key_hash(presented), stored_hash)


def public_prefix(key_id: str) -> str:
    """How a key is shown where the key itself must not be: ``slk_<id>``."""
    return f"{MARK}{key_id}"

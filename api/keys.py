"""API keys: random tokens stored only as salted scrypt hashes, with a role each.

A token reads `tlk_<id>_<secret>`: `id` (12 hex digits) finds the row, `secret` (256
random bits) is checked against `scrypt(secret, salt)`. The token is shown once, when the
key is created. scrypt costs ~20 ms and 16 MiB, so a process remembers which tokens it has
already verified (by their SHA-256, in memory only) and afterwards only re-reads the key's
row, which keeps a revocation effective on the very next request.

A wrong secret must be cheap to refuse, since key ids are not secret: each row also keeps
`check_bits`, the first 16 bits of HMAC-SHA256(salt, secret). All but 1 in 65,536 wrong
secrets fail that check without scrypt; the 16 bits leave 240 of the secret's 256 unknown,
so a leaked table is no easier to use. Failures count against a `FailureLimiter` per key
id and client: beyond it, wrong secrets are 429 (and cost not even an audit entry on a
GET). At most two scrypt runs happen at once.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import threading
from dataclasses import dataclass
from typing import Any

from api.errors import HttpError
from api.ratelimit import FailureLimiter
from api.store import Database, now

__all__ = ["ROLES", "Principal", "KeyInfo", "KeyStore", "role_allows", "ANONYMOUS"]

ROLES = ("reader", "writer", "admin")
PREFIX = "tlk_"
_ID_LEN = 12
# Interactive-login strength; the secret has 256 bits, so this only guards a leaked table.
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}


def role_allows(role: str, needed: str) -> bool:
    return ROLES.index(role) >= ROLES.index(needed)


@dataclass(frozen=True)
class Principal:
    key_id: str
    name: str
    role: str

    def allows(self, needed: str) -> bool:
        return role_allows(self.role, needed)


ANONYMOUS = Principal("anonymous", "auth disabled", "admin")


@dataclass(frozen=True)
class KeyInfo:
    id: str
    name: str
    role: str
    created_at: str
    created_by: str
    revoked_at: str | None
    revoked_by: str | None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "role": self.role,
                "created_at": self.created_at, "created_by": self.created_by,
                "revoked_at": self.revoked_at, "revoked_by": self.revoked_by,
                "active": self.revoked_at is None}


def _hash(secret: str, salt: bytes) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, **_SCRYPT)


def _check_bits(secret: str, salt: bytes) -> bytes:
    return hmac.new(salt, secret.encode(), hashlib.sha256).digest()[:2]


def _parse(token: str) -> tuple[str, str] | None:
    if not token.startswith(PREFIX) or len(token) < len(PREFIX) + _ID_LEN + 2:
        return None
    key_id, sep, secret = token[len(PREFIX):].partition("_")
    if len(key_id) != _ID_LEN or not sep or not secret:
        return None
    return key_id, secret


class KeyStore:
    def __init__(self, db: Database, *, failures_per_minute: int = 10) -> None:
        self.db = db
        self._verified: dict[bytes, str] = {}
        self._lock = threading.Lock()
        self.failures = FailureLimiter(failures_per_minute)
        # Bounds scrypt's memory (16 MiB a run) whatever the number of request threads.
        self._scrypt_slots = threading.BoundedSemaphore(2)

    def create(self, role: str, name: str, created_by: str) -> tuple[KeyInfo, str]:
        if role not in ROLES:
            raise HttpError(400, "invalid_role", f"role {role!r} is not one of {ROLES}")
        key_id = secrets.token_hex(_ID_LEN // 2)
        secret = secrets.token_urlsafe(32)
        salt = secrets.token_bytes(16)
        with self.db.write() as conn:
            conn.execute(
                "insert into api_keys (id, name, role, salt, hash, check_bits, created_at, "
                "created_by) values (?, ?, ?, ?, ?, ?, ?, ?)",
                (key_id, name, role, salt, _hash(secret, salt), _check_bits(secret, salt),
                 now(), created_by))
        return self.get(key_id), f"{PREFIX}{key_id}_{secret}"

    def get(self, key_id: str) -> KeyInfo:
        row = self.db.one("select * from api_keys where id = ?", (key_id,))
        if row is None:
            raise HttpError(404, "key_not_found", f"no API key with id {key_id!r}; "
                            "`GET /admin/keys` (or `tidelog api keys list`) lists them")
        return _info(row)

    def all(self) -> list[KeyInfo]:
        return [_info(r) for r in self.db.query("select * from api_keys order by created_at")]

    def revoke(self, key_id: str, revoked_by: str) -> KeyInfo:
        with self.db.write() as conn:
            cur = conn.execute("update api_keys set revoked_at = ?, revoked_by = ? "
                               "where id = ? and revoked_at is null", (now(), revoked_by, key_id))
            changed = cur.rowcount
        info = self.get(key_id)  # 404 for an unknown id
        if not changed and info.revoked_at is None:  # pragma: no cover - raced
            raise HttpError(409, "conflict", f"key {key_id} changed while revoking; retry")
        return info

    def active_count(self) -> int:
        row = self.db.one("select count(*) from api_keys where revoked_at is null")
        return int(row[0]) if row else 0

    def authenticate(self, token: str, *, client: str = "", hash_allowed: bool = True
                     ) -> tuple[Principal | None, bool]:
        """(the key's principal or None, whether scrypt was needed but not allowed).

        With `hash_allowed=False` only tokens this process verified before, and wrong
        secrets that fail the cheap check, are answered, so an event loop can call it
        without blocking for ~20 ms. Raises a 429 `HttpError` once `client` has used up
        its failures for this key id.
        """
        parsed = _parse(token)
        if parsed is None:
            return None, False
        key_id, secret = parsed
        row = self.db.one("select id, name, role, salt, hash, check_bits, revoked_at "
                          "from api_keys where id = ?", (key_id,))
        if row is None or row["revoked_at"] is not None:
            return None, False
        principal = Principal(row["id"], row["name"], row["role"])
        fingerprint = hashlib.sha256(token.encode()).digest()
        with self._lock:
            if self._verified.get(fingerprint) == key_id:
                return principal, False
        # Failures count per key id and client. With none left, a secret that fails the
        # check bits is a 429 at once; one that passes them (the real secret, or 1 wrong
        # secret in 65,536) is still checked, so the key's owner is never locked out.
        bucket = (key_id, client)
        if row["check_bits"] is None:  # a key older than check bits: no cheap answer
            self._refuse_if_limited(key_id, self.failures.wait(bucket))
        elif not hmac.compare_digest(_check_bits(secret, row["salt"]), row["check_bits"]):
            self._refuse_if_limited(key_id, self.failures.take(bucket))
            return None, False
        if not hash_allowed:
            return None, True
        with self._scrypt_slots:
            matches = hmac.compare_digest(_hash(secret, row["salt"]), row["hash"])
        if not matches:
            self.failures.take(bucket)
            return None, False
        if row["check_bits"] is None:  # a key made before the cheap check existed
            with self.db.write() as conn:
                conn.execute("update api_keys set check_bits = ? where id = ?",
                             (_check_bits(secret, row["salt"]), key_id))
        with self._lock:
            if len(self._verified) >= 4096:
                self._verified.clear()
            self._verified[fingerprint] = key_id
        return principal, False

    @staticmethod
    def _refuse_if_limited(key_id: str, wait: float) -> None:
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            raise HttpError(429, "too_many_requests",
                            f"too many failed attempts with key {key_id} from this address; "
                            f"retry in {seconds} s with the right key",
                            {"Retry-After": str(seconds)}, retry_after=seconds)


def _info(row: Any) -> KeyInfo:
    return KeyInfo(row["id"], row["name"], row["role"], row["created_at"], row["created_by"],
                   row["revoked_at"], row["revoked_by"])

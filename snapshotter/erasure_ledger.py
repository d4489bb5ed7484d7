"""The append-only erasure ledger, `$TIDELOG_HOME/erasures/ledger.jsonl`.

One JSON line per completed erasure. The subject is recorded only as a keyed hash,
`HMAC-SHA256(secret, "<table>\\n<canonical key JSON>")`, with the secret in
`$TIDELOG_HOME/erasures/secret` (mode 0600): the ledger alone does not let anyone test
whether a given key was erased, and the holder of the secret can answer "was key K of
table T erased?" without the ledger holding K. The lines form a hash chain as the API's
audit log does (api/audit.py): `hash = sha256(previous hash + "\\n" + canonical JSON of
the entry without its hash)`, so an edited, inserted or removed line breaks `verify()` at
that line. The chain has no secret: see docs/erasure.md for what it does not protect.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from typing import Any

from snapshotter.erasure import ErasureFiles
from tidelog.errors import ErasureError

__all__ = ["GENESIS", "ErasureLedger", "LedgerCheck", "entry_hash"]

GENESIS = "0" * 64


def _canonical(entry: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in entry.items() if k != "hash"}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False)


def entry_hash(previous: str, entry: dict[str, Any]) -> str:
    return hashlib.sha256(f"{previous}\n{_canonical(entry)}".encode()).hexdigest()


@dataclass(frozen=True)
class LedgerCheck:
    """`ErasureLedger.verify`'s answer: the entries that chain, the head hash when all do
    (None for an empty ledger), else the first entry that broke the chain and why."""

    entries: int
    head: str | None = None
    broken_at: int | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.broken_at is None

    def to_json(self) -> dict[str, Any]:
        if self.ok:
            return {"ok": True, "entries": self.entries, "head": self.head}
        return {"ok": False, "entries": self.entries, "broken_at": self.broken_at,
                "problem": self.problem}


class ErasureLedger:
    def __init__(self, files: ErasureFiles) -> None:
        self.files = files

    def _secret(self) -> bytes:
        path = self.files.secret
        if not path.exists():
            self.files.directory.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass  # created meanwhile by another process
            else:
                with os.fdopen(fd, "w") as fh:
                    fh.write(secrets.token_hex(32))
                    fh.flush()
                    os.fsync(fh.fileno())
        return bytes.fromhex(path.read_text().strip())

    def subject_hash(self, table: str, key_json: str) -> str:
        """The keyed hash that stands for the subject in the ledger."""
        return hmac.new(self._secret(), f"{table}\n{key_json}".encode(),
                        hashlib.sha256).hexdigest()

    def entries(self) -> list[dict[str, Any]]:
        path = self.files.ledger
        if not path.exists():
            return []
        found = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                found.append(json.loads(line))
            except ValueError as exc:
                raise ErasureError(f"erasure ledger {path} line {number} is not JSON: {exc};"
                                   " `tidelog erasures verify` shows where it broke") from exc
        return found

    def find(self, erasure_id: str) -> dict[str, Any] | None:
        return next((e for e in self.entries() if e.get("id") == erasure_id), None)

    def append(self, entry: dict[str, Any]) -> dict[str, Any]:
        """Add one entry at the end of the chain (the caller holds the erasure lock)."""
        existing = self.entries()
        previous = existing[-1]["hash"] if existing else GENESIS
        chained = {**entry, "seq": len(existing) + 1, "prev": previous}
        chained["hash"] = entry_hash(previous, chained)
        path = self.files.ledger
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as fh:
            fh.write(json.dumps(chained, sort_keys=True, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return chained

    def verify(self) -> LedgerCheck:
        """Walk the chain; the first entry that was changed, inserted or removed."""
        previous, count = GENESIS, 0
        for count, entry in enumerate(self.entries(), 1):
            problem = None
            if entry.get("seq") != count:
                problem = f"entry {count} has seq {entry.get('seq')}: entries were removed " \
                          "or reordered"
            elif entry.get("prev") != previous:
                problem = f"entry {count} does not chain to the entry before it"
            elif entry.get("hash") != entry_hash(previous, entry):
                problem = f"entry {count} does not match its hash: it was changed"
            if problem:
                return LedgerCheck(entries=count - 1, broken_at=count, problem=problem)
            previous = entry["hash"]
        return LedgerCheck(entries=count, head=previous if count else None)

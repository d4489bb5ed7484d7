# ruff: noqa: F811  (test_api's fixtures are imported by name and then requested)
"""The API under hostile input (issue 12): auth before any body is read, a body limit,
failed-key attempts that cost no scrypt, big integer row keys, a tamper-evident audit
log, strict optional bodies, a truthful `Allow`, and recipes checked by object.

The app and keys come from test_api's fixtures; docs/security.md is the threat model."""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import polars as pl
import pytest
from fastapi import FastAPI

from api import keys as key_module
from api.keys import KeyStore
from tests.unit.test_api import (  # noqa: F401 - fixtures and helpers
    EXAMPLE,
    SNAP,
    Api,
    AppFactory,
    _open,
    _quiet,
    _snapshot,
    api,
    assert_error,
    make_app,
    settings,
    source,
)
from trainer.testing import FakeSnapshotProvider

MIB = 1024 * 1024
DOCS = Path(__file__).resolve().parents[2] / "docs"


# -- driving the ASGI app with a body we can count ------------------------------------------

class Sent:
    """What one ASGI request did: the answer, and how many body bytes the app pulled."""

    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""
        self.pulled = 0

    def json(self) -> Any:
        return json.loads(self.body)


def _chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    block = b"x" * size
    for _ in range(total // size):
        yield block


def asgi(app: FastAPI, method: str, path: str, headers: dict[str, str],
         chunks: Iterator[bytes], client: tuple[str, int] = ("203.0.113.7", 40000)) -> Sent:
    """One request straight into the app (its lifespan must be running), the body pulled
    lazily from `chunks` as the app asks for it."""
    sent = Sent()
    path_only, _, query = path.partition("?")

    async def run() -> None:
        done = anyio.Event()
        pending = iter(chunks)
        nxt = next(pending, None)

        async def receive() -> dict[str, Any]:
            nonlocal nxt
            if nxt is None:
                await done.wait()
                return {"type": "http.disconnect"}
            chunk, nxt = nxt, next(pending, None)
            sent.pulled += len(chunk)
            return {"type": "http.request", "body": chunk, "more_body": nxt is not None}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                sent.status = message["status"]
                sent.headers = {k.decode().lower(): v.decode()
                                for k, v in message.get("headers", [])}
            elif message["type"] == "http.response.body":
                sent.body += message.get("body", b"")
                if not message.get("more_body"):
                    done.set()

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": method, "scheme": "http", "path": path_only,
                 "raw_path": path_only.encode(), "query_string": query.encode(),
                 "root_path": "", "client": client, "server": ("testserver", 80),
                 "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
        await app(scope, receive, send)

    anyio.run(run)
    return sent


def _shape(sent: Sent, status: int, code: str) -> dict[str, Any]:
    assert sent.status == status, (sent.status, sent.body[:300])
    assert sent.headers["content-type"].startswith("application/json")
    body = sent.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code, body
    return dict(body["error"])


# -- 6: authenticate first, then limit the body ----------------------------------------------

def test_unauthenticated_bodies_are_never_read(api: Api) -> None:
    big = 64 * MIB
    for framing in ({"content-length": str(big)}, {"transfer-encoding": "chunked"}):
        headers = {"content-type": "application/json", **framing}
        sent = asgi(api.app, "POST", "/snapshots", headers, _chunks(big))
        err = _shape(sent, 401, "unauthorized")
        assert "Authorization: Bearer" in err["message"]
        assert sent.pulled == 0, f"the app read {sent.pulled} bytes before authenticating"
        wrong = {**headers, "Authorization": "Bearer tlk_0123456789ab_not-the-secret"}
        sent = asgi(api.app, "POST", "/snapshots", wrong, _chunks(big))
        _shape(sent, 401, "unauthorized")
        assert sent.pulled == 0
        # a key whose role is too low is refused before its body is read, too
        reader = {**headers, **api.keys["reader"]}
        sent = asgi(api.app, "POST", "/snapshots", reader, _chunks(big))
        _shape(sent, 403, "forbidden")
        assert sent.pulled == 0
    # the refusals are audited like any other
    denied = api.get("/audit?result=denied&limit=1000").json()["items"]
    assert sum(e["action"] == "snapshots.create" for e in denied) >= 6


def test_bodies_over_the_limit_are_413_without_buffering(api: Api) -> None:
    limit = api.state.config.max_body_bytes
    assert limit == MIB  # the documented default
    writer = {"content-type": "application/json", **api.keys["writer"]}
    sent = asgi(api.app, "POST", "/snapshots", {**writer, "content-length": str(64 * MIB)},
                _chunks(64 * MIB))
    err = _shape(sent, 413, "payload_too_large")
    assert "TIDELOG_API_MAX_BODY" in err["message"] and err["details"]["limit"] == limit
    assert sent.pulled == 0  # refused on Content-Length alone
    sent = asgi(api.app, "POST", "/snapshots", {**writer, "transfer-encoding": "chunked"},
                _chunks(64 * MIB))
    _shape(sent, 413, "payload_too_large")
    assert sent.pulled <= limit + 64 * 1024, sent.pulled  # stopped at the limit
    # a Content-Length that understates the body is caught on the bytes themselves
    sent = asgi(api.app, "POST", "/snapshots", {**writer, "content-length": "10"},
                _chunks(4 * MIB))
    _shape(sent, 413, "payload_too_large")
    assert sent.pulled <= limit + 64 * 1024
    # a body under the limit is served as before
    body = json.dumps({"tables": ["public.customers"]}).encode()
    sent = asgi(api.app, "POST", "/snapshots", {**writer, "content-length": str(len(body))},
                iter([body]))
    assert sent.status == 202, sent.body
    api.wait(sent.json()["id"])
    bad = api.client.post("/snapshots", content=b"{not json",
                          headers={**writer, "content-length": "9"})
    assert_error(bad, 422, "validation_error")


def test_the_body_limit_is_a_setting(make_app: AppFactory, settings: Any,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from api.config import load_api_config
    from tidelog.errors import ConfigError

    monkeypatch.delenv("TIDELOG_API_MAX_BODY", raising=False)
    assert load_api_config(settings).max_body_bytes == MIB
    monkeypatch.setenv("TIDELOG_API_MAX_BODY", "2048")
    assert load_api_config(settings).max_body_bytes == 2048
    monkeypatch.setenv("TIDELOG_API_MAX_BODY", "0")
    with pytest.raises(ConfigError, match="TIDELOG_API_MAX_BODY"):
        load_api_config(settings)
    monkeypatch.delenv("TIDELOG_API_MAX_BODY")
    for api_ in _open(make_app(max_body_bytes=64)):
        resp = api_.post("/snapshots", {"tables": ["public.customers"] * 10}, role="writer")
        err = assert_error(resp, 413, "payload_too_large")
        assert err["details"]["limit"] == 64
        assert api_.post("/snapshots/" + SNAP + "/pin", {"reason": "x"},
                         role="writer").status_code == 404


# -- 7: failed key attempts are cheap -------------------------------------------------------

@pytest.fixture
def scrypt_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = key_module._hash

    def counted(secret: str, salt: bytes) -> bytes:
        calls.append(1)
        return real(secret, salt)

    monkeypatch.setattr(key_module, "_hash", counted)
    return calls


def _key_id(api_: Api, role: str) -> str:
    return api_.keys[role]["Authorization"].removeprefix("Bearer tlk_")[:12]


def test_wrong_secrets_for_a_real_key_id_cost_no_scrypt(api: Api,
                                                        scrypt_calls: list[int]) -> None:
    key_id = _key_id(api, "writer")
    allowed = api.state.config.auth_failures_per_minute
    answers = []
    started = time.perf_counter()
    for _ in range(200):
        token = f"tlk_{key_id}_{secrets.token_urlsafe(32)}"
        answers.append(asgi(api.app, "GET", "/snapshots",
                            {"Authorization": f"Bearer {token}"}, iter(())))
    elapsed = time.perf_counter() - started
    statuses = [a.status for a in answers]
    assert statuses == [401] * allowed + [429] * (200 - allowed), statuses
    # 16 check bits refuse all but 1 in 65,536 wrong secrets without scrypt
    assert len(scrypt_calls) <= 2, len(scrypt_calls)
    assert elapsed < 10, elapsed
    limited = _shape(answers[-1], 429, "too_many_requests")
    assert key_id in limited["message"] and limited["details"]["retry_after"] >= 1
    assert 1 <= int(answers[-1].headers["retry-after"]) <= 60
    # the real key, never seen by this process, still works at once from the same address
    started = time.perf_counter()
    sent = asgi(api.app, "GET", "/snapshots", api.keys["writer"], iter(()))
    assert sent.status == 200, sent.body
    assert time.perf_counter() - started < 2
    assert len(scrypt_calls) <= 3
    # and the 429s were cheap: no audit entry each (a GET refused by the limiter)
    denied = api.get("/audit?result=denied&limit=1000").json()["items"]
    assert len([e for e in denied if e["action"] == "snapshots.list"]) == allowed


def test_failures_are_limited_per_key_and_client_even_without_check_bits(
        api: Api, scrypt_calls: list[int]) -> None:
    """A key made before check bits existed must run scrypt for every guess: there the
    limiter is what bounds the cost, per key id and client address."""
    key_id = _key_id(api, "reader")
    with api.state.db.write() as conn:
        conn.execute("update api_keys set check_bits = null where id = ?", (key_id,))
    allowed = api.state.config.auth_failures_per_minute
    answers = [asgi(api.app, "GET", "/snapshots",
                    {"Authorization": f"Bearer tlk_{key_id}_guess{n}"}, iter(()))
               for n in range(15)]
    assert [a.status for a in answers] == [401] * allowed + [429] * (15 - allowed)
    assert len(scrypt_calls) == allowed
    _shape(answers[-1], 429, "too_many_requests")
    # another client is not limited by this one's failures
    other = asgi(api.app, "GET", "/snapshots", api.keys["reader"], iter(()),
                 client=("198.51.100.9", 2))
    assert other.status == 200
    assert len(scrypt_calls) == allowed + 1
    # verified once, the token is answered from memory, limited address or not
    same = asgi(api.app, "GET", "/snapshots", api.keys["reader"], iter(()))
    assert same.status == 200
    assert len(scrypt_calls) == allowed + 1


def test_failure_buckets_refill_and_stay_bounded() -> None:
    from api.ratelimit import FailureLimiter

    now = [0.0]
    limiter = FailureLimiter(6, clock=lambda: now[0], max_buckets=4)  # one per 10 s
    key = ("0123456789ab", "203.0.113.7")
    assert [limiter.take(key) for _ in range(6)] == [0.0] * 6
    assert limiter.take(key) == pytest.approx(10.0) and limiter.wait(key) > 0
    assert limiter.wait(("0123456789ab", "198.51.100.1")) == 0.0  # per client
    now[0] = 9.0
    assert limiter.take(key) == pytest.approx(1.0)
    now[0] = 10.0
    assert limiter.take(key) == 0.0 and limiter.take(key) > 0
    for n in range(20):  # address churn: the table stays bounded
        limiter.take(("0123456789ab", f"10.0.0.{n}"))
    assert len(limiter._buckets) <= 4


def test_keys_made_before_the_cheap_check_gain_it_on_first_use(api: Api) -> None:
    store: KeyStore = api.state.keys
    info, token = store.create("reader", "old", "test")
    with api.state.db.write() as conn:
        conn.execute("update api_keys set check_bits = null where id = ?", (info.id,))
    fresh = KeyStore(api.state.db)
    assert fresh.authenticate(token)[0] is not None
    row = api.state.db.one("select check_bits from api_keys where id = ?", (info.id,))
    assert row["check_bits"] is not None


# -- 8: row keys beyond 64 bits --------------------------------------------------------------

def test_big_integer_row_keys_are_matched_exactly(make_app: AppFactory) -> None:
    big = 99999999999999999999999999
    fake = FakeSnapshotProvider()
    # numeric keys arrive as text (decimal.handling.mode=string)
    fake.put("public.ledger", pl.DataFrame({"id": [str(big), "5"], "v": [1, 2]}))
    fake.put("public.customers", pl.DataFrame({"id": [1, 2], "name": ["a", "b"]}))
    for api_ in _open(make_app(provider=fake)):
        _snapshot(api_, ["public.ledger", "public.customers"])
        resp = api_.get('/lineage/rows?table=public.customers&key={"id":' + str(big) + "}",
                        role="reader")
        assert resp.status_code == 200, resp.text
        assert json.loads(resp.text)["key"] == {"id": big}  # exactly, not a float
        held = resp.json()["snapshots"]
        assert held and not any(s["present"] for s in held)
        for key in ('{"id":' + str(big) + "}", '{"id":"' + str(big) + '"}'):
            resp = api_.get(f"/lineage/rows?table=public.ledger&key={key}", role="reader")
            assert resp.status_code == 200, resp.text
            [ledger] = resp.json()["snapshots"]
            assert ledger["present"] and ledger["rows"][0]["v"] == 1
        for bad in ('{"id":NaN}', '{"id":Infinity}', '{"id":1e999}'):
            err = assert_error(api_.get(f"/lineage/rows?table=public.ledger&key={bad}"),
                               422, "validation_error")
            assert "finite" in err["details"]["errors"][0]["message"]


# -- 9: the audit log is a hash chain ------------------------------------------------------------

def _audit_db(api_: Api) -> sqlite3.Connection:
    return sqlite3.connect(api_.state.config.db_path, isolation_level=None)


def _columns(db: sqlite3.Connection) -> str:
    names = [r[1] for r in db.execute("pragma table_info(audit)")]
    return ", ".join(names)


def test_audit_chain_verifies_and_replace_is_refused(api: Api) -> None:
    for _ in range(3):
        api.post(f"/snapshots/{SNAP}/pin", role="writer")
    report = api.get("/audit/verify").json()
    assert report["ok"] is True and report["first_broken_seq"] is None
    assert report["entries"] >= 3 and report["head"]["hash"]
    db = _audit_db(api)
    row = db.execute("select * from audit where seq = 2").fetchone()
    forged = (2, *row[1:3], "forged", *row[4:])
    marks = ", ".join("?" * len(forged))
    for verb in ("insert or replace", "replace"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute(f"{verb} into audit ({_columns(db)}) values ({marks})", forged)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("update audit set actor = 'x' where seq = 1")
    assert api.get("/audit/verify").json()["ok"] is True


@pytest.mark.parametrize("tamper", ["update", "replace", "delete", "backdate"])
def test_audit_tampering_with_the_file_is_reported(api: Api, tamper: str) -> None:
    for _ in range(4):
        api.post(f"/snapshots/{SNAP}/pin", role="writer")
    db = _audit_db(api)
    db.executescript("drop trigger audit_no_update; drop trigger audit_no_delete; "
                     "drop trigger if exists audit_no_replace;")
    if tamper == "update":
        db.execute("update audit set status = 200, result = 'ok' where seq = 3")
    elif tamper == "replace":
        row = db.execute("select * from audit where seq = 3").fetchone()
        marks = ", ".join("?" * len(row))
        db.execute(f"insert or replace into audit ({_columns(db)}) values ({marks})",
                   (3, row[1], "someone-else", *row[3:]))
    elif tamper == "delete":
        db.execute("delete from audit where seq = 3")
    else:
        db.execute("update audit set at = (select at from audit where seq = 2) where seq = 3")
    report = api.get("/audit/verify").json()
    assert report["ok"] is False, report
    assert report["first_broken_seq"] == 3, report
    assert report["reason"]


def test_audit_verify_cli(api: Api, monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture[str]) -> None:
    from tidelog.cli import main

    api.post(f"/snapshots/{SNAP}/pin", role="writer")
    monkeypatch.setenv("TIDELOG_API_DB", str(api.state.config.db_path))
    assert main(["api", "audit", "verify", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    db = _audit_db(api)
    db.execute("drop trigger audit_no_update")
    db.execute("update audit set actor = 'nobody' where seq = 1")
    assert main(["api", "audit", "verify"]) == 1
    out = capsys.readouterr()
    assert "seq 1" in out.out + out.err


# -- 11: strict optional bodies, a truthful Allow ---------------------------------------------

def test_optional_bodies_are_strict(api: Api) -> None:
    for url in ("/runs/abc/rebuild", f"/snapshots/{SNAP}/pin", "/cdc/connector/restart"):
        err = assert_error(api.post(url, {"bogus": 1}, role="writer"), 422,
                           "validation_error")
        assert err["details"]["errors"][0]["field"] == "body.bogus"
        null = api.client.post(url, content=b"null", headers={
            **api.keys["writer"], "content-type": "application/json"})
        err = assert_error(null, 422, "validation_error")
        assert err["details"]["errors"][0]["field"] == "body"
    assert_error(api.post("/runs/abc/rebuild", {"experiment": "bad\n"}, role="writer"), 422)
    ok = api.post("/runs/abc/rebuild", {"experiment": "other"}, role="writer")
    assert ok.status_code == 202 and ok.json()["params"]["experiment"] == "other"
    bare = api.client.post("/runs/abc/rebuild", headers=api.keys["writer"])
    assert bare.status_code == 202 and bare.json()["params"]["experiment"] == "tidelog"


def test_allow_lists_only_methods_that_are_allowed(api: Api) -> None:
    spec = api.client.get("/openapi.json").json()
    for template in spec["paths"]:
        url = next((u for (m, p), (u, _) in EXAMPLE.items() if p == template), template)
        url = url.partition("?")[0]
        for probe in ("OPTIONS", "PATCH"):
            resp = api.client.request(probe, url, headers=api.keys["admin"])
            assert_error(resp, 405, "method_not_allowed")
            allowed = [m.strip() for m in resp.headers["allow"].split(",")]
            assert allowed, url
            for method in allowed:
                again = api.client.request(method, url, headers=api.keys["admin"])
                assert again.status_code != 405, (probe, url, method, again.text)
    resp = api.client.options("/snapshots/diff", headers=api.keys["admin"])
    assert resp.headers["allow"] == "GET"


# -- 12: only recipes run as recipes -------------------------------------------------------------

def test_only_decorated_recipes_defined_in_an_allowed_module_run(api: Api,
                                                                 monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    import psycopg

    called: list[Any] = []
    monkeypatch.setattr(psycopg, "connect", lambda *a, **k: called.append(a))
    before = len(api.get("/jobs?limit=500").json()["items"])
    for reference, why in (("examples.shop:psycopg.connect", "not defined in"),
                           ("examples.churn:features", "@recipe"),
                           ("examples.churn:dt.datetime", "not defined in")):
        err = assert_error(api.post("/runs", {"recipe": reference}, role="writer"), 403,
                           "recipe_not_allowed")
        assert why in err["message"] and reference in err["message"]
    assert called == []
    assert len(api.get("/jobs?limit=500").json()["items"]) == before
    accepted = api.post("/runs", {"recipe": "examples.churn:train",
                                  "params": {"model": "logreg"}}, role="writer")
    assert accepted.status_code == 202, accepted.text
    assert api.wait(accepted.json()["id"])["state"] == "succeeded"


# -- docs --------------------------------------------------------------------------------------

def test_the_threat_model_names_every_control() -> None:
    text = (DOCS / "security.md").read_text()
    for needed in ("reader", "writer", "admin", "network", "TIDELOG_API_MAX_BODY",
                   "TIDELOG_API_AUTH_FAILURES", "GET /audit/verify",
                   "tidelog api audit verify", "TIDELOG_API_RECIPES", "@recipe", "redact",
                   "scrypt", "DSN"):
        assert needed in text, f"docs/security.md does not mention {needed}"
    readme = (DOCS.parent / "README.md").read_text()
    assert "## Security" in readme and "docs/security.md" in readme
    api_doc = (DOCS / "api.md").read_text()
    for setting in ("TIDELOG_API_MAX_BODY", "TIDELOG_API_AUTH_FAILURES"):
        assert f"`{setting}`" in api_doc
    assert "hash chain" in api_doc


def test_an_api_db_from_before_the_chain_is_upgraded(tmp_path: Path) -> None:
    from api.audit import AuditLog
    from api.store import Database

    path = tmp_path / "old.db"
    old = sqlite3.connect(path, isolation_level=None)
    old.executescript("""
        create table api_keys (id text primary key, name text not null, role text not null,
            salt blob not null, hash blob not null, created_at text not null,
            created_by text not null, revoked_at text, revoked_by text);
        create table audit (seq integer primary key autoincrement, at text not null,
            actor text not null, role text, action text not null, method text not null,
            path text not null, target text, status integer not null, result text not null,
            error_code text, job_id text, request_id text, client text);
        create trigger audit_no_update before update on audit
        begin select raise(abort, 'the audit log is append-only'); end;
        create trigger audit_no_delete before delete on audit
        begin select raise(abort, 'the audit log is append-only'); end;
    """)
    salt = b"s" * 16
    old.execute("insert into api_keys values ('0123456789ab', 'old', 'admin', ?, ?, 'then', "
                "'cli', null, null)", (salt, key_module._hash("sekrit", salt)))
    for n in range(3):
        old.execute("insert into audit (at, actor, action, method, path, status, result) "
                    "values (?, 'cli', 'keys.create', 'POST', '/admin/keys', 201, 'ok')",
                    (f"2025-01-0{n + 1}",))
    old.close()
    db = Database(path)
    audit = AuditLog(db)
    report = audit.verify()
    assert report["ok"] and report["entries"] == 3, report
    store = KeyStore(db)
    assert store.authenticate("tlk_0123456789ab_sekrit")[0] is not None
    from api.audit import AuditEntry

    audit.record(AuditEntry("cli", "keys.list", "GET", "/admin/keys", 200, "ok"))
    assert audit.verify()["entries"] == 4
    raw = sqlite3.connect(path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        raw.execute("update audit set actor = 'x' where seq = 1")
    assert raw.execute("select check_bits from api_keys").fetchone()[0] is not None
    # upgraded once: an entry whose hash is removed later is a break, not re-chained
    raw.execute("drop trigger audit_no_update")
    raw.execute("update audit set hash = null where seq = 4")
    raw.commit()
    report = AuditLog(db).verify()
    assert (report["ok"], report["first_broken_seq"]) == (False, 4), report
    db.close()

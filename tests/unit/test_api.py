"""REST API unit tests: FastAPI TestClient over the trainer's in-memory fake snapshotter
and a real MLflow SQLite store; CDC and verification calls are swapped for stubs."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import create_app
from api.cache import LineageCache
from api.config import ApiConfig, load_api_config
from api.errors import HttpError, status_for
from api.jobs import INTERRUPTED
from api.keys import ROLES
from examples.churn import demo_tables
from snapshotter.cut import Cut
from snapshotter.snapshots import open_snapshot
from tidelog.errors import (
    ArchiveError,
    BrokerUnreachable,
    ConfigError,
    ConnectorError,
    ConnectorNotFound,
    ConnectorRejected,
    ConnectUnreachable,
    CutError,
    DigestMismatch,
    LogIdentityError,
    ModelNotFound,
    RunNotFound,
    SnapshotError,
    SnapshotNotFound,
    SnapshotWriteError,
    SourceError,
    SourceUnreachable,
    TrackingUnavailable,
    TrainingError,
)
from tidelog.settings import Settings
from trainer.testing import FakeSnapshotProvider

RECIPE = "examples.churn:train"
SNAP = "0" * 16
DOCS = Path(__file__).resolve().parents[2] / "docs" / "api.md"

# Every operation and the role it needs (None: no key). The test below fails when an
# endpoint is added without a line here.
ROLE_OF: dict[tuple[str, str], str | None] = {
    ("GET", "/healthz"): None,
    ("GET", "/readyz"): None,
    ("GET", "/metrics"): None,
    ("POST", "/snapshots"): "writer",
    ("GET", "/snapshots"): "reader",
    ("GET", "/snapshots/diff"): "reader",
    ("GET", "/snapshots/{snapshot_id}"): "reader",
    ("DELETE", "/snapshots/{snapshot_id}"): "writer",
    ("POST", "/snapshots/{snapshot_id}/verify"): "reader",
    ("POST", "/snapshots/{snapshot_id}/pin"): "writer",
    ("POST", "/snapshots/{snapshot_id}/unpin"): "writer",
    ("POST", "/runs"): "writer",
    ("POST", "/runs/{run_id}/rebuild"): "writer",
    ("GET", "/runs/{run_id}"): "reader",
    ("GET", "/lineage/models/{name}"): "reader",
    ("GET", "/lineage/rows"): "reader",
    ("GET", "/cdc/connector"): "reader",
    ("POST", "/cdc/connector/apply"): "writer",
    ("POST", "/cdc/connector/restart"): "writer",
    ("GET", "/cdc/archive"): "reader",
    ("POST", "/cdc/archive/verify"): "reader",
    ("GET", "/jobs"): "reader",
    ("GET", "/jobs/{job_id}"): "reader",
    ("POST", "/admin/keys"): "admin",
    ("GET", "/admin/keys"): "admin",
    ("DELETE", "/admin/keys/{key_id}"): "admin",
    ("GET", "/audit"): "admin",
    ("GET", "/audit/verify"): "admin",
    ("POST", "/erasures"): "admin",
    ("GET", "/erasures"): "admin",
    ("POST", "/gc"): "admin",
    ("GET", "/pipelines"): "reader",
    ("GET", "/pipelines/{name}"): "reader",
    ("POST", "/pipelines/{name}/evaluate"): "reader",
    ("POST", "/pipelines/{name}/trigger"): "writer",
    ("GET", "/pipelines/{name}/history"): "reader",
    ("GET", "/models/{name}/monitor"): "reader",
    ("POST", "/models/{name}/predict"): "reader",
}

# A request of the right shape for each operation (the answer may be a 404 or a job).
EXAMPLE: dict[tuple[str, str], tuple[str, Any]] = {
    ("POST", "/snapshots"): ("/snapshots", {"tables": ["public.customers"]}),
    ("GET", "/snapshots/diff"): (f"/snapshots/diff?a={SNAP}&b={SNAP}", None),
    ("GET", "/snapshots/{snapshot_id}"): (f"/snapshots/{SNAP}", None),
    ("DELETE", "/snapshots/{snapshot_id}"): (f"/snapshots/{SNAP}", None),
    ("POST", "/snapshots/{snapshot_id}/verify"): (f"/snapshots/{SNAP}/verify", None),
    ("POST", "/snapshots/{snapshot_id}/pin"): (f"/snapshots/{SNAP}/pin", {"reason": "x"}),
    ("POST", "/snapshots/{snapshot_id}/unpin"): (f"/snapshots/{SNAP}/unpin", None),
    ("POST", "/runs"): ("/runs", {"recipe": "examples.nope:train", "snapshot_id": SNAP}),
    ("POST", "/runs/{run_id}/rebuild"): ("/runs/nope/rebuild", {}),
    ("GET", "/runs/{run_id}"): ("/runs/nope", None),
    ("GET", "/lineage/models/{name}"): ("/lineage/models/nope", None),
    ("GET", "/lineage/rows"): ('/lineage/rows?table=public.customers&key={"id":1}', None),
    ("POST", "/cdc/connector/apply"): ("/cdc/connector/apply", {"tables": ["public.x"]}),
    ("POST", "/cdc/connector/restart"): ("/cdc/connector/restart", {}),
    ("GET", "/cdc/archive"): ("/cdc/archive?lag=false", None),
    ("GET", "/jobs/{job_id}"): ("/jobs/job_" + "0" * 32, None),
    ("POST", "/admin/keys"): ("/admin/keys", {"role": "reader", "name": "x"}),
    ("DELETE", "/admin/keys/{key_id}"): ("/admin/keys/" + "0" * 12, None),
    ("POST", "/erasures"): ("/erasures", {"table": "public.customers", "key": {"id": 1},
                                          "reason": "x", "dry_run": True}),
    ("POST", "/gc"): ("/gc", {"dry_run": True}),
    ("GET", "/pipelines/{name}"): ("/pipelines/nope", None),
    ("POST", "/pipelines/{name}/evaluate"): ("/pipelines/nope/evaluate", None),
    ("POST", "/pipelines/{name}/trigger"): ("/pipelines/nope/trigger", {"reason": "x"}),
    ("GET", "/pipelines/{name}/history"): ("/pipelines/nope/history", None),
    ("GET", "/models/{name}/monitor"): ("/models/nope/monitor", None),
    ("POST", "/models/{name}/predict"): ("/models/nope/predict",
                                         {"instances": [{"tenure_days": 1.0}]}),
}


@pytest.fixture(scope="module", autouse=True)
def _quiet(quiet_mlflow: None) -> None:
    """Every test here runs MLflow (tests/unit/conftest.py)."""


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    home = tmp_path_factory.mktemp("api-home")
    return Settings(home=home, mlflow_uri=f"sqlite:///{home}/mlflow.db",
                    archive_root=str(home / "archive"), snapshot_root=str(home / "snapshots"))


@pytest.fixture(scope="module")
def source() -> FakeSnapshotProvider:
    fake = FakeSnapshotProvider()
    for name, frame in demo_tables(customers=80).items():
        fake.put(name, frame)
    return fake


@dataclasses.dataclass
class Api:
    app: FastAPI
    client: TestClient
    keys: dict[str, dict[str, str]]

    @property
    def state(self) -> Any:
        return self.app.state.tidelog

    def get(self, url: str, role: str = "admin", **kw: Any) -> Any:
        return self.client.get(url, headers={**self.keys[role], **kw.pop("headers", {})}, **kw)

    def post(self, url: str, body: Any = None, role: str = "admin", **kw: Any) -> Any:
        return self.client.post(url, json=body,
                                headers={**self.keys[role], **kw.pop("headers", {})}, **kw)

    def delete(self, url: str, role: str = "admin") -> Any:
        return self.client.delete(url, headers=self.keys[role])

    def wait(self, job_id: str, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.get(f"/jobs/{job_id}").json()
            if job["state"] in ("succeeded", "failed"):
                return dict(job)
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} still {job['state']} after {timeout}s")

    def idle(self, timeout: float = 120) -> None:
        """Wait until no job is queued or running (before the app shuts down)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            counts = self.state.jobs.counts()
            if not any(n for (_, s), n in counts.items() if s in ("queued", "running")):
                return
            time.sleep(0.05)
        raise AssertionError("jobs still running")


AppFactory = Callable[..., FastAPI]


@pytest.fixture
def make_app(settings: Settings, source: FakeSnapshotProvider, tmp_path: Path) -> AppFactory:
    def make(settings_: Settings | None = None, provider: Any = None, **config: Any
             ) -> FastAPI:
        options = {"db_path": tmp_path / "api.db", "recipe_modules": ("examples",),
                   "lineage_ttl": 0.0, **config}
        return create_app(settings_ or settings, config=ApiConfig(**options),
                          provider=provider or source)
    return make


def _open(app: FastAPI) -> Iterator[Api]:
    with TestClient(app, raise_server_exceptions=False) as client:
        keys = {"none": {}}
        for role in ROLES:
            _, token = app.state.tidelog.keys.create(role, f"{role} key", "test")
            keys[role] = {"Authorization": f"Bearer {token}"}
        api = Api(app, client, keys)
        try:
            yield api
        finally:
            api.idle()


@pytest.fixture
def api(make_app: AppFactory) -> Iterator[Api]:
    yield from _open(make_app())


def assert_error(resp: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """The one error shape: {"error": {"code": str, "message": str, "details": dict}}."""
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    assert isinstance(body["error"]["code"], str) and body["error"]["code"]
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["details"], dict)
    if code is not None:
        assert body["error"]["code"] == code, body
    return dict(body["error"])


def _snapshot(api: Api, tables: list[str] | None = None, **kw: Any) -> dict[str, Any]:
    resp = api.post("/snapshots", {"tables": tables or ["public.customers"], **kw})
    assert resp.status_code == 202, resp.text
    job = api.wait(resp.json()["id"])
    assert job["state"] == "succeeded", job
    return job["result"]  # type: ignore[no-any-return]


# -- auth ----------------------------------------------------------------------------

def test_every_operation_has_a_role_and_is_documented(api: Api) -> None:
    spec = api.client.get("/openapi.json").json()
    operations = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    assert operations == set(ROLE_OF)
    guide = DOCS.read_text()
    missing = [f"{m} {p}" for m, p in sorted(operations) if f"{m} {p}" not in guide]
    assert not missing, f"docs/api.md does not document {missing}"
    assert api.client.get("/docs").status_code == 200


@pytest.mark.parametrize("operation", sorted(k for k, v in ROLE_OF.items() if v))
def test_auth_matrix(api: Api, operation: tuple[str, str]) -> None:
    method, path = operation
    url, body = EXAMPLE.get(operation, (path, None))
    needed = ROLE_OF[operation]
    assert needed is not None

    def call(headers: dict[str, str]) -> Any:
        return api.client.request(method, url, json=body, headers=headers)

    err = assert_error(call({}), 401, "unauthorized")
    assert "Authorization: Bearer" in err["message"]
    for bad in ({"Authorization": "Bearer nope"},
                {"Authorization": "Bearer tlk_0123456789ab_not-the-secret"},
                {"X-API-Key": "tlk_0123456789ab_not-the-secret"},
                {"Authorization": "Basic dXNlcjpwYXNz"}):
        assert_error(call(bad), 401, "unauthorized")
    for role in ROLES:
        resp = call(api.keys[role])
        if ROLES.index(role) < ROLES.index(needed):
            err = assert_error(resp, 403, "forbidden")
            assert needed in err["message"]
        else:
            assert resp.status_code not in (401, 403), (role, resp.text)
    # the X-API-Key header is as good as a bearer token
    token = api.keys[needed]["Authorization"].removeprefix("Bearer ")
    assert call({"X-API-Key": token}).status_code not in (401, 403)


def test_401_challenges_and_health_needs_no_key(api: Api) -> None:
    resp = api.client.get("/snapshots")
    assert resp.headers["www-authenticate"].startswith("Bearer")
    assert api.client.get("/healthz").json() == {"status": "ok"}
    assert api.client.get("/metrics").status_code == 200


def test_erasure_is_admin_only_and_answers_with_the_report(api: Api) -> None:
    body = {"table": "public.customers", "key": {"id": 424242}, "reason": "ticket 7",
            "dry_run": True}
    resp = api.post("/erasures", body)
    assert resp.status_code == 200, resp.text
    report = resp.json()
    assert report["dry_run"] is True and report["erasure_id"] is None
    assert "no change event" in report["notes"][-1]
    assert "kafka_topics" in report["cannot_erase"]
    assert_error(api.post("/erasures", body, role="writer"), 403, "forbidden")
    assert_error(api.post("/erasures", {**body, "reason": ""}), 422)
    assert_error(api.post("/erasures", {**body, "table": "customers"}), 422)
    listed = api.get("/erasures").json()
    assert listed == {"items": [], "pending": [],
                      "chain": {"ok": True, "entries": 0, "head": None}}


def test_revoked_key_stops_working_at_once(api: Api) -> None:
    created = api.post("/admin/keys", {"role": "writer", "name": "ci"})
    assert created.status_code == 201
    token, key_id = created.json()["key"], created.json()["id"]
    headers = {"Authorization": f"Bearer {token}"}
    assert api.client.get("/snapshots", headers=headers).status_code == 200
    listed = api.get("/admin/keys").json()["items"]
    assert key_id in {k["id"] for k in listed}
    assert all("key" not in k and "hash" not in k for k in listed)
    assert api.delete(f"/admin/keys/{key_id}").json()["active"] is False
    assert_error(api.client.get("/snapshots", headers=headers), 401)
    # the store holds only a salted hash
    raw = sqlite3.connect(api.state.config.db_path).execute(
        "select salt, hash from api_keys where id = ?", (key_id,)).fetchone()
    assert token.encode() not in raw[1] and len(raw[0]) == 16


def test_auth_can_be_switched_off_for_local_dev(make_app: AppFactory) -> None:
    for api in _open(make_app(auth=False)):
        assert api.client.get("/snapshots").status_code == 200
        assert api.client.get("/audit").status_code == 200


def test_auth_is_on_unless_switched_off(settings: Settings,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIDELOG_API_AUTH", raising=False)
    assert load_api_config(settings).auth is True
    monkeypatch.setenv("TIDELOG_API_AUTH", "off")
    assert load_api_config(settings).auth is False
    monkeypatch.setenv("TIDELOG_API_AUTH", "maybe")
    with pytest.raises(ConfigError, match="TIDELOG_API_AUTH .*'maybe'"):
        load_api_config(settings)
    monkeypatch.setenv("TIDELOG_API_AUTH", "on")
    monkeypatch.setenv("TIDELOG_API_WORKERS", "0")
    with pytest.raises(ConfigError, match="TIDELOG_API_WORKERS .*greater than or equal to 1"):
        load_api_config(settings)


def test_keys_cli_creates_lists_and_revokes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str],
                                            make_app: AppFactory, settings: Settings) -> None:
    from tidelog.cli import main

    monkeypatch.setenv("TIDELOG_HOME", str(tmp_path))
    assert main(["api", "keys", "create", "--role", "writer", "--name", "etl"]) == 0
    token = capsys.readouterr().out.strip()
    assert re.fullmatch(r"tlk_[0-9a-f]{12}_\S+", token)
    assert main(["api", "keys", "list", "--json"]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert listed["role"] == "writer" and listed["active"]
    app = make_app(dataclasses.replace(settings, home=tmp_path))
    with TestClient(app) as client:
        ok = client.post("/snapshots/" + SNAP + "/pin", headers={"X-API-Key": token})
        assert ok.status_code == 404  # authorised; the snapshot does not exist
    assert main(["api", "keys", "revoke", listed["id"]]) == 0
    with TestClient(make_app(dataclasses.replace(settings, home=tmp_path))) as client:
        assert client.get("/snapshots", headers={"X-API-Key": token}).status_code == 401


# -- errors ----------------------------------------------------------------------------

def test_error_shape_on_every_kind_of_error(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    assert_error(api.client.get("/snapshots"), 401, "unauthorized")
    assert_error(api.get("/audit", role="writer"), 403, "forbidden")
    assert_error(api.get("/no/such/endpoint"), 404, "not_found")
    assert_error(api.get(f"/snapshots/{SNAP}"), 404, "snapshot_not_found")
    resp = api.client.patch("/snapshots", headers=api.keys["admin"])
    assert_error(resp, 405, "method_not_allowed")
    assert "GET" in resp.headers["allow"]
    resp = api.delete("/snapshots/diff")  # not DELETE /snapshots/{snapshot_id}
    assert_error(resp, 405, "method_not_allowed")
    assert resp.headers["allow"] == "GET"
    assert_error(api.post("/snapshots", {"tables": "nope"}), 422, "validation_error")
    assert_error(api.get("/snapshots?limit=0"), 422, "validation_error")
    bad_json = api.client.post("/snapshots", content=b"{not json",
                               headers={**api.keys["admin"], "content-type": "application/json"})
    assert_error(bad_json, 422, "validation_error")
    assert_error(api.client.post("/snapshots", content=b"", headers=api.keys["admin"]), 422)
    assert_error(api.get("/snapshots?cursor=%%%"), 422, "validation_error")
    assert_error(api.get('/lineage/rows?table=public.customers&key=[1]'), 422)
    assert_error(api.get(f"/snapshots/diff?a={SNAP}&b={SNAP}"), 404, "snapshot_not_found")
    assert_error(api.get("/cdc/connector"), 503, "not_configured")  # no Connect URL
    monkeypatch.setattr(api.state.core, "readiness",
                        lambda: {"postgres": {"ok": False, "error": "down"}})
    err = assert_error(api.client.get("/readyz"), 503, "not_ready")
    assert err["details"]["checks"]["postgres"]["error"] == "down"

    def boom(*_: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(api.state.core, "list_snapshots", boom)
    err = assert_error(api.get("/snapshots"), 500, "internal")
    assert err["details"]["request_id"]


def test_validation_errors_name_field_paths(api: Api) -> None:
    body = {"tables": ["public.ok", "no_schema"], "bogus": 1,
            "at": {"partitions": [{"topic": "t", "partition": -1, "end": 5}]}}
    err = assert_error(api.post("/snapshots", body), 422, "validation_error")
    fields = {e["field"] for e in err["details"]["errors"]}
    assert {"body.tables[1]", "body.bogus", "body.at.CutIn.partitions[0].partition"} <= fields
    assert all(isinstance(e["loc"], list) and e["message"] for e in err["details"]["errors"])
    err = assert_error(api.get("/snapshots?created_after=0.5"), 422)
    assert err["details"]["errors"][0]["field"] == "query.created_after"
    err = assert_error(api.get("/snapshots/NOT-AN-ID"), 422)
    assert err["details"]["errors"][0]["field"] == "path.snapshot_id"
    err = assert_error(api.post("/runs", {"recipe": RECIPE, "params": {"a": True},
                                          "seed": -1}), 422)
    fields = {e["field"] for e in err["details"]["errors"]}
    assert "body.seed" in fields and any(f.startswith("body.params.a") for f in fields)
    err = assert_error(api.post("/runs", {"recipe": RECIPE, "snapshot_id": SNAP,
                                          "at": "latest"}), 422)
    assert "not both" in err["details"]["errors"][0]["message"]
    err = assert_error(api.post("/snapshots", {"tables": ["public.a"], "at": {
        "partitions": [{"topic": "t", "partition": 0, "start": 9, "end": 5}]}}), 422)
    assert "start" in err["details"]["errors"][-1]["message"]


@pytest.mark.parametrize(("error", "status", "code"), [
    (SnapshotNotFound("no snapshot 'x' under /s"), 404, "snapshot_not_found"),
    (SnapshotError("snapshots a and b share no table"), 400, "snapshot_error"),
    # A full disk is the server's problem, whatever the message says.
    (SnapshotWriteError("no snapshot: writing under /s failed: No space left on device"),
     507, "snapshot_write_failed"),
    (DigestMismatch("digests differ"), 409, "digest_mismatch"),
    (CutError("cut end 9 is beyond the archived high-water mark 3"), 400, "invalid_cut"),
    (LogIdentityError("another log"), 409, "log_identity_changed"),
    (ArchiveError("archive gap"), 503, "archive_unavailable"),
    (ConnectorNotFound("no connector named x; create it"), 404, "connector_not_found"),
    (ConnectUnreachable("Kafka Connect at u is unreachable"), 503, "connector_unavailable"),
    # Connect answering "no" is not Connect being down.
    (ConnectorRejected("Kafka Connect rejected the config: x"), 400, "connector_rejected"),
    (ConnectorError("Kafka Connect at u is unreachable"), 400, "connector_error"),
    (BrokerUnreachable("cannot list topics"), 503, "broker_unavailable"),
    (SourceUnreachable("cannot connect to Postgres at x"), 503, "source_unavailable"),
    (SourceError("cannot connect: table public.x does not exist in y"), 400,
     "source_not_ready"),
    (ConfigError("setting 'connect_url' is not configured"), 503, "not_configured"),
    (RunNotFound("unknown run 'x': MLflow at u has no such run"), 404, "run_not_found"),
    (ModelNotFound("no registered model 'm' in MLflow at u"), 404, "model_not_found"),
    (TrackingUnavailable("MLflow at http://x failed to log run: boom"), 503,
     "mlflow_unavailable"),
    (TrainingError("unknown run 'x': recipe x raised ValueError"), 400, "training_error"),
    (HttpError(418, "teapot", "short and stout"), 418, "teapot"),
])
def test_core_errors_map_to_statuses(error: Exception, status: int, code: str) -> None:
    assert status_for(error) == (status, code)  # type: ignore[arg-type]


def test_real_core_messages_map_as_expected(api: Api, settings: Settings) -> None:
    with pytest.raises(SnapshotError) as missing:
        open_snapshot(settings, SNAP)
    assert status_for(missing.value)[0] == 404
    assert_error(api.get("/runs/0123456789abcdef0123456789abcdef"), 404, "run_not_found")
    assert_error(api.get("/lineage/models/no-such-model"), 404, "model_not_found")
    assert_error(api.get('/lineage/rows?table=public.nothing&key={"id":1}'), 404,
                 "table_not_found")


# -- jobs ------------------------------------------------------------------------------

def test_snapshot_job_and_manifest(api: Api) -> None:
    result = _snapshot(api)
    manifest = api.get(f"/snapshots/{result['snapshot_id']}").json()
    assert manifest["id"] == result["snapshot_id"]
    assert manifest["digest"] == result["digest"]
    assert manifest["tables"]["public.customers"]["rows"] == 80
    assert manifest["pinned"] is False
    job = api.get("/jobs?kind=snapshot.create").json()["items"][-1]
    assert job["plan"]["cut"] == manifest["cut"]  # the plan a re-queued run would repeat


def test_failed_job_keeps_the_error_in_the_standard_shape(api: Api) -> None:
    resp = api.post("/snapshots", {"tables": ["public.nothing"]})
    job = api.wait(resp.json()["id"])
    assert job["state"] == "failed"
    assert job["error"]["code"] == "invalid_cut" and job["error"]["status"] == 400
    assert "unknown table" in job["error"]["message"]


def test_idempotency_keys(api: Api) -> None:
    body = {"tables": ["public.customers"]}
    first = api.post("/snapshots", body, headers={"Idempotency-Key": "k-1"})
    again = api.post("/snapshots", body, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert first.headers["location"] == f"/jobs/{first.json()['id']}"
    other = api.post("/snapshots", {"tables": ["public.payments"]},
                     headers={"Idempotency-Key": "k-1"})
    assert_error(other, 409, "idempotency_key_reused")
    # scoped to the caller: another key may use the same Idempotency-Key
    theirs = api.post("/snapshots", body, role="writer", headers={"Idempotency-Key": "k-1"})
    assert theirs.status_code == 202 and theirs.json()["id"] != first.json()["id"]
    # the same logical request with the defaults spelled out is the same request
    spelled = api.post("/snapshots", {**body, "at": "latest"}, headers={"Idempotency-Key": "k-1"})
    assert spelled.json()["id"] == first.json()["id"]
    # racing requests with one key make one job
    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(lambda _: api.post("/snapshots", body, headers={
            "Idempotency-Key": "race"}).json()["id"], range(8)))
    assert len(ids) == 1


def test_identical_concurrent_snapshot_requests_yield_one_snapshot(api: Api,
                                                                   settings: Settings) -> None:
    before = {p.name for p in Path(settings.snapshot_root).iterdir()} if Path(
        settings.snapshot_root).exists() else set()
    body = {"tables": ["public.subscriptions"]}
    with ThreadPoolExecutor(4) as pool:
        jobs = list(pool.map(lambda _: api.post("/snapshots", body).json()["id"], range(4)))
    assert len(set(jobs)) == 4
    results = [api.wait(j) for j in jobs]
    assert {r["state"] for r in results} == {"succeeded"}
    assert len({r["result"]["snapshot_id"] for r in results}) == 1
    created = {p.name for p in Path(settings.snapshot_root).iterdir()} - before
    assert len([n for n in created if not n.startswith(".")]) <= 1


def test_jobs_survive_an_api_restart(make_app: AppFactory, source: FakeSnapshotProvider,
                                     settings: Settings) -> None:
    """A crash mid-job: snapshot creation is re-queued and repeats its plan; training,
    which would log a second MLflow run, is failed with a reason."""
    release = threading.Event()
    entered = threading.Event()

    class Stuck(FakeSnapshotProvider):
        def create_snapshot(self, *args: Any, **kwargs: Any) -> Any:
            entered.set()
            release.wait(60)
            raise RuntimeError("the process died here")

    stuck = Stuck()
    stuck.__dict__.update(source.__dict__)
    app = make_app(provider=stuck, workers=1)
    with TestClient(app) as client:
        _, token = app.state.tidelog.keys.create("admin", "a", "test")
        headers = {"Authorization": f"Bearer {token}"}
        snap = client.post("/snapshots", json={"tables": ["public.payments"]},
                           headers=headers).json()
        assert entered.wait(30)
        train = client.post("/runs", json={"recipe": RECIPE, "tables": ["public.payments"]},
                            headers=headers).json()  # queued behind the stuck job
        # the train job is queued; pretend the process was killed after it started too
    db = sqlite3.connect(app.state.tidelog.config.db_path)
    with db:
        db.execute("update jobs set state = 'running', attempts = 1 where id = ?",
                   (train["id"],))
    assert {r[0] for r in db.execute("select state from jobs")} == {"running"}
    plan = json.loads(db.execute("select plan from jobs where id = ?",
                                 (snap["id"],)).fetchone()[0])

    restarted = make_app(provider=source)
    with TestClient(restarted) as client:
        done = {}
        for job_id in (snap["id"], train["id"]):
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                done[job_id] = client.get(f"/jobs/{job_id}", headers=headers).json()
                if done[job_id]["state"] in ("succeeded", "failed"):
                    break
                time.sleep(0.05)
    release.set()  # the stale worker of the "dead" process may not overwrite anything
    time.sleep(0.2)
    assert done[snap["id"]]["state"] == "succeeded"
    assert done[snap["id"]]["attempts"] == 2
    expected = FakeSnapshotProvider.snapshot_id(Cut.from_json(plan["cut"]),
                                                ["public.payments"])
    assert done[snap["id"]]["result"]["snapshot_id"] == expected
    assert done[train["id"]]["state"] == "failed"
    assert done[train["id"]]["error"]["message"] == INTERRUPTED
    final = sqlite3.connect(restarted.state.tidelog.config.db_path).execute(
        "select state from jobs where id = ?", (snap["id"],)).fetchone()[0]
    assert final == "succeeded"


def test_a_second_api_on_the_same_store_is_refused(make_app: AppFactory) -> None:
    first = make_app()
    with TestClient(first):
        with pytest.raises(Exception, match="another tidelog API"):
            with TestClient(make_app()):
                pass


# -- snapshots ---------------------------------------------------------------------------

def test_pagination_and_filters(make_app: AppFactory, settings: Settings,
                                tmp_path: Path) -> None:
    local = dataclasses.replace(settings, snapshot_root=str(tmp_path / "snaps"))
    fake = FakeSnapshotProvider()
    fake.put("public.t", pl.DataFrame({"id": [1], "v": ["a"]}))
    fake.put("public.u", pl.DataFrame({"id": [1], "w": [1.5]}))
    for api in _open(make_app(local, provider=fake)):
        made = []
        for i in range(5):
            fake.change("public.t", lambda f, i=i: f.with_columns(pl.lit(f"v{i}").alias("v")))
            made.append(_snapshot(api, ["public.t"])["snapshot_id"])
        made.append(_snapshot(api, ["public.u"])["snapshot_id"])
        seen, cursor, pages = [], None, 0
        while True:
            url = "/snapshots?limit=2" + (f"&cursor={cursor}" if cursor else "")
            page = api.get(url, role="reader").json()
            seen += [s["id"] for s in page["items"]]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == made and pages == 3
        only_t = api.get("/snapshots?table=public.t&limit=500").json()["items"]
        assert [s["id"] for s in only_t] == made[:5]
        one = api.get(f"/snapshots/{made[2]}").json()
        by_digest = api.get(f"/snapshots?digest={one['digest']}").json()["items"]
        assert [s["id"] for s in by_digest] == [made[2]]
        table_digest = one["tables"]["public.t"]["digest"]
        assert [s["id"] for s in api.get(f"/snapshots?digest={table_digest}").json()[
            "items"]] == [made[2]]
        created = one["created_at"]
        after = api.get("/snapshots", params={"created_after": created}).json()["items"]
        before = api.get("/snapshots", params={"created_before": created}).json()["items"]
        assert [s["id"] for s in after] == made[3:] and [s["id"] for s in before] == made[:2]
        assert api.get("/snapshots?created_after=2999-01-01T00:00:00").json()["items"] == []
        jobs = api.get("/jobs?limit=4").json()
        more = api.get(f"/jobs?limit=4&cursor={jobs['next_cursor']}").json()
        assert len(jobs["items"]) == 4 and len(more["items"]) == 2
        assert not {j["id"] for j in jobs["items"]} & {j["id"] for j in more["items"]}
        assert_error(api.get("/jobs?cursor=bm90LWFuLWludA"), 422, "validation_error")


def test_pin_blocks_delete_until_unpinned(api: Api, settings: Settings) -> None:
    sid = _snapshot(api, ["public.payments"])["snapshot_id"]
    pin = api.post(f"/snapshots/{sid}/pin", {"reason": "audit 2025"}, role="writer").json()
    assert pin["pinned"] and pin["reason"] == "audit 2025"
    assert api.get(f"/snapshots/{sid}").json()["pinned"] is True
    err = assert_error(api.delete(f"/snapshots/{sid}", role="writer"), 409, "snapshot_pinned")
    assert err["details"]["pin"]["reason"] == "audit 2025"
    assert api.post(f"/snapshots/{sid}/unpin", role="writer").json()["pinned"] is False
    assert api.delete(f"/snapshots/{sid}", role="writer").json() == {"deleted": sid}
    assert_error(api.get(f"/snapshots/{sid}"), 404, "snapshot_not_found")
    assert not (Path(settings.snapshot_root) / sid).exists()
    assert_error(api.post(f"/snapshots/{sid}/pin"), 404)


def test_verify_and_diff_return_the_core_reports(api: Api,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    sid = _snapshot(api)["snapshot_id"]
    report = {"id": sid, "ok": True, "digest_recorded": "d", "digest_recomputed": "d",
              "tables": {"public.customers": {"ok": True}}}
    calls: list[Any] = []
    monkeypatch.setattr(api.state.core, "verify_snapshot",
                        lambda s, src: calls.append((s, src)) or report)
    assert api.post(f"/snapshots/{sid}/verify?against_source=true", role="reader").json() \
        == report
    assert calls == [(sid, True)]
    diff = {"a": sid, "b": sid, "tables": {"public.customers": {
        "inserted": 0, "updated": 0, "deleted": 0, "columns_added": [], "columns_dropped": [],
        "examples": {"inserted": [], "updated": [], "deleted": []}}}}
    monkeypatch.setattr(api.state.core, "diff_snapshots", lambda a, b, limit: diff)
    assert api.get(f"/snapshots/diff?a={sid}&b={sid}").json() == diff


# -- training, lineage, delete guard --------------------------------------------------------

def test_train_rebuild_lineage_and_delete_guard(api: Api) -> None:
    resp = api.post("/runs", {"recipe": RECIPE, "params": {"model": "logreg"}, "seed": 3,
                              "register_as": "churn-api"}, role="writer")
    assert resp.status_code == 202, resp.text
    job = api.wait(resp.json()["id"])
    assert job["state"] == "succeeded", job
    run_id, sid = job["result"]["run_id"], job["result"]["snapshot_id"]
    assert job["result"]["registered_version"] == "1"

    run = api.get(f"/runs/{run_id}", role="reader").json()
    assert run["snapshot_id"] == sid and run["seed"] == 3 and run["rebuilds"] == []
    model = api.get("/lineage/models/churn-api?version=1", role="reader").json()
    assert model["run_id"] == run_id and model["snapshot_id"] == sid
    rows = api.get('/lineage/rows?table=public.customers&key={"id": 7}', role="reader").json()
    held = [s for s in rows["snapshots"] if s["snapshot_id"] == sid]
    assert held and held[0]["present"] and held[0]["runs"][0]["run_id"] == run_id

    err = assert_error(api.delete(f"/snapshots/{sid}", role="writer"), 409, "snapshot_in_use")
    assert err["details"]["model_versions"] == [
        {"name": "churn-api", "version": "1", "run_id": run_id}]

    rebuilt = api.wait(api.post(f"/runs/{run_id}/rebuild", {}, role="writer").json()["id"])
    assert rebuilt["state"] == "succeeded", rebuilt
    assert rebuilt["result"]["verified"] is True
    run = api.get(f"/runs/{run_id}").json()
    assert run["rebuilds"][0]["run_id"] == rebuilt["result"]["new_run_id"]
    assert run["rebuilds"][0]["verified"] is True
    again = api.get(f"/runs/{rebuilt['result']['new_run_id']}").json()
    assert again["rebuild_of"] == run_id and again["verification"]["dataset_match"] is True


def test_recipes_outside_the_allowlist_are_refused(make_app: AppFactory) -> None:
    for api in _open(make_app(recipe_modules=())):
        err = assert_error(api.post("/runs", {"recipe": RECIPE}, role="writer"), 403,
                           "recipe_not_allowed")
        assert "TIDELOG_API_RECIPES" in err["message"]
    assert ApiConfig(Path("x"), recipe_modules=("examples",)).recipe_allowed(RECIPE)
    assert not ApiConfig(Path("x"), recipe_modules=("ex",)).recipe_allowed(RECIPE)


def test_lineage_cache_keeps_answers_until_their_inputs_change() -> None:
    inputs = {"runs": 1}
    cache = LineageCache(lambda: inputs["runs"], max_age=60, check_every=0.01)
    computed: list[int] = []

    def compute() -> int:
        computed.append(1)
        return len(computed)

    cache.start()
    try:
        time.sleep(0.1)  # the watcher's first look
        assert cache.get("k", compute) == cache.get("k", compute) == 1
        inputs["runs"] = 2  # e.g. a run logged from the CLI
        time.sleep(0.1)
        assert cache.get("k", compute) == 2
        cache.clear()  # e.g. a job of this API finished
        assert cache.get("k", compute) == 3
        assert (cache.hits, cache.misses) == (1, 3)
    finally:
        cache.stop()
    short = LineageCache(None, max_age=0.05)
    assert short.get("k", compute) == short.get("k", compute) == 4
    time.sleep(0.1)
    assert short.get("k", compute) == 5
    off = LineageCache(None, max_age=0)
    assert off.get("k", compute) == 6 and off.get("k", compute) == 7


# -- CDC -------------------------------------------------------------------------------

def test_connector_and_archive_endpoints(api: Api, monkeypatch: pytest.MonkeyPatch,
                                         settings: Settings) -> None:
    core = api.state.core
    status = {"name": "tidelog-postgres", "connector": {"state": "RUNNING"},
              "tasks": [{"id": 0, "state": "RUNNING"}], "type": "source"}
    monkeypatch.setattr(core, "connector_status", lambda name: {**status, "name": name})
    assert api.get("/cdc/connector?name=c1", role="reader").json()["name"] == "c1"
    applied: list[Any] = []
    monkeypatch.setattr(core, "connector_apply",
                        lambda *a: applied.append(a) or (status, ["public.a has array ..."]))
    job = api.wait(api.post("/cdc/connector/apply", {"tables": ["public.a"], "timeout": 5},
                            role="writer").json()["id"])
    assert job["state"] == "succeeded" and job["result"]["connector"] == "tidelog-postgres"
    assert job["result"]["warnings"] == ["public.a has array ..."]  # as the CLI prints them
    job = api.wait(api.post("/cdc/connector/apply", {"tables": ["public.a"], "timeout": 5,
                                                     "replica_identity_full": True},
                            role="writer").json()["id"])
    assert applied == [("tidelog-postgres", ["public.a"], "tidelog", 5.0, False),
                       ("tidelog-postgres", ["public.a"], "tidelog", 5.0, True)]
    monkeypatch.setattr(core, "connector_restart",
                        lambda name, timeout: (_ for _ in ()).throw(
                            ConnectorNotFound(f"no connector named {name}")))
    job = api.wait(api.post("/cdc/connector/restart", None, role="writer").json()["id"])
    assert job["state"] == "failed" and job["error"]["code"] == "connector_not_found"

    from cdc.reader import LogIdentity
    from snapshotter.archive import TRANSACTION_SCHEMA, Archive

    archive = Archive(settings.archive_root)
    gen = archive.open_generation("tidelog.transaction", 0, LogIdentity("c1", "t1"))
    archive.write_segment("tidelog.transaction", 0, gen.number, 0, 7,
                          TRANSACTION_SCHEMA.empty_table())
    body = api.get("/cdc/archive", role="reader").json()  # no broker configured
    [part] = body["partitions"]
    assert part["high_water_mark"] == 7 and part["log_identity"]["topic_id"] == "t1"
    assert part["lag"] is None and body["broker"]["checked"] is False
    assert "bootstrap" in body["broker"]["error"]
    quiet = api.get("/cdc/archive?lag=false").json()
    assert quiet["broker"] == {"checked": False} and quiet["partitions"][0]["lag"] is None


# -- audit, metrics --------------------------------------------------------------------------

def test_audit_log_records_writes_denials_and_jobs(api: Api) -> None:
    api.client.get("/snapshots")  # denied: no key
    api.get("/audit", role="reader")  # denied: role
    sid = _snapshot(api, ["public.customers"])["snapshot_id"]
    api.post(f"/snapshots/{sid}/pin", role="writer")
    entries = api.get("/audit?limit=1000").json()["items"]
    results = {(e["action"], e["result"]) for e in entries}
    assert ("snapshots.list", "denied") in results and ("audit.list", "denied") in results
    assert ("snapshots.create", "accepted") in results
    assert ("job.snapshot.create", "succeeded") in results
    pin = next(e for e in entries if e["action"] == "snapshots.pin")
    writer_id = next(k.id for k in api.state.keys.all() if k.role == "writer")
    assert pin["actor"] == writer_id and pin["target"] == sid and pin["status"] == 200
    assert all(e["at"] and e["request_id"] for e in entries if e["method"] != "JOB")
    mine = api.get(f"/audit?actor={writer_id}").json()["items"]
    assert mine and {e["actor"] for e in mine} == {writer_id}
    page = api.get("/audit?limit=2").json()
    assert len(page["items"]) == 2 and page["next_cursor"]
    db = sqlite3.connect(api.state.config.db_path)
    for statement in ("update audit set actor = 'x'", "delete from audit"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute(statement)


def test_metrics_are_prometheus_text(api: Api) -> None:
    api.get("/snapshots")
    text = api.client.get("/metrics").text
    assert api.client.get("/metrics").headers["content-type"].startswith("text/plain")
    assert 'tidelog_api_requests_total{method="GET",route="/snapshots",status="200"}' in text
    assert "tidelog_api_request_duration_seconds_bucket" in text
    sample = re.compile(r'^[a-z_]+(\{([a-z_]+="[^"]*",?)*\})? -?[0-9.e+-]+$|^# (HELP|TYPE) ')
    for line in text.strip().splitlines():
        assert sample.match(line), line


def test_readiness_reports_each_component(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    checks = {name: {"ok": True, "detail": "fine"}
              for name in ("postgres", "broker", "connect", "mlflow", "archive", "capture")}
    monkeypatch.setattr(api.state.core, "readiness", lambda: checks)
    assert api.client.get("/readyz").json() == {"status": "ready", "checks": checks}
    from api.health import CHECKS, readiness

    settings = api.state.settings
    real = readiness(dataclasses.replace(settings, postgres_dsn="", connect_url=""))
    assert set(real) == set(checks)
    assert real["postgres"]["ok"] is False and "postgres_dsn" in real["postgres"]["error"]
    assert real["archive"]["ok"] is True and real["mlflow"]["ok"] is True
    assert real["capture"]["ok"] is False and "connect_url" in real["capture"]["error"]
    # A partition stopped at an undecodable event makes the API not ready, naming it.
    from snapshotter.archive import Archive, PartitionFailure

    Archive(settings.archive_root).record_failure(PartitionFailure(
        "tidelog.public.prices", 0, 0, 41, "cannot convert 'NAN'", column="price"))
    stopped = readiness(settings, {"capture": CHECKS["capture"]})
    assert stopped["capture"]["ok"] is False
    assert "tidelog.public.prices[0] offset 41, column 'price'" in stopped["capture"]["error"]


# -- the CLI answers as the API does ---------------------------------------------------------

def _cli(settings: Settings, monkeypatch: pytest.MonkeyPatch, db: Path, *argv: str
         ) -> tuple[int, str, str]:
    import contextlib
    import io

    from api.config import ApiEnv
    from tidelog.cli import main
    from tidelog.settings import env_name

    for name, value in {**settings.to_environ(), env_name(ApiEnv, "db"): str(db)}.items():
        monkeypatch.setenv(name, value)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_cli_pin_unpin_and_delete_share_the_api_rules(api: Api, settings: Settings,
                                                      tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    sid = _snapshot(api, ["public.payments"])["snapshot_id"]
    db = tmp_path / "api.db"  # the database make_app gave the API
    code, out, _ = _cli(settings, monkeypatch, db, "snapshot", "pin", sid, "--reason",
                        "audit 2026", "--json")
    assert code == 0 and json.loads(out)["reason"] == "audit 2026"
    shown = api.get(f"/snapshots/{sid}").json()
    assert shown["pinned"] is True
    err = assert_error(api.delete(f"/snapshots/{sid}", role="writer"), 409, "snapshot_pinned")
    assert err["details"]["pin"]["pinned_by"] == "cli"
    code, _, stderr = _cli(settings, monkeypatch, db, "snapshot", "delete", sid)
    assert code == 2 and "pinned by cli (audit 2026); unpin it first" in stderr
    assert (Path(settings.snapshot_root) / sid).exists()
    assert _cli(settings, monkeypatch, db, "snapshot", "unpin", sid)[0] == 0
    assert api.get(f"/snapshots/{sid}").json()["pinned"] is False
    code, out, _ = _cli(settings, monkeypatch, db, "snapshot", "delete", sid, "--json")
    assert code == 0 and json.loads(out) == {"deleted": sid}
    assert_error(api.get(f"/snapshots/{sid}"), 404, "snapshot_not_found")
    code, _, stderr = _cli(settings, monkeypatch, db, "snapshot", "pin", sid)
    assert code == 2 and f"no snapshot '{sid}'" in stderr


def test_archive_verify_answers_the_same_over_http_and_the_cli(
        make_app: AppFactory, settings: Settings, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    settings = dataclasses.replace(settings, archive_root=str(tmp_path / "archive"))
    with contextlib.closing(_open(make_app(settings))) as opened:
        _check_archive_verify(next(opened), settings, tmp_path, monkeypatch)


def _check_archive_verify(api: Api, settings: Settings, tmp_path: Path,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    from cdc.reader import LogIdentity
    from snapshotter.archive import TRANSACTION_SCHEMA, Archive

    archive = Archive(settings.archive_root)
    gen = archive.open_generation("tidelog.verify", 0, LogIdentity("c1", "t9"))
    segment = archive.write_segment("tidelog.verify", 0, gen.number, 0, 3,
                                    TRANSACTION_SCHEMA.empty_table())
    db = tmp_path / "api.db"
    clean = api.post("/cdc/archive/verify", role="reader").json()
    assert clean["ok"] is True and clean["segments_checked"] >= 1 and clean["damaged"] == []
    code, out, _ = _cli(settings, monkeypatch, db, "archive", "verify", "--json")
    assert code == 0 and json.loads(out) == clean
    path = Path(segment.path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    damaged = api.post("/cdc/archive/verify", role="reader").json()
    assert damaged["ok"] is False and damaged["damaged"] == [segment.path]
    assert "Restore it from a backup" in damaged["hint"]
    code, out, _ = _cli(settings, monkeypatch, db, "archive", "verify", "--json")
    assert code == 1 and json.loads(out) == damaged
    assert api.post("/cdc/archive/verify", role="none").status_code == 401


def test_a_pin_from_another_process_waits_for_a_delete_and_then_finds_no_snapshot(
        api: Api, settings: Settings, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two writers with their own database connections and locks, as the API and
    `tidelog snapshot pin` in another process have: the delete checks pins under the
    snapshot's exclusive lock and the pin takes its shared lock, so the pin waits for the
    delete and then finds no snapshot, never lands on one being deleted."""
    import api.retention as retention
    from api.core import Core
    from api.retention import Pins, delete_unless_kept
    from api.store import Database
    from snapshotter.store import SnapshotStore

    sid = _snapshot(api, ["public.payments"])["snapshot_id"]
    db = tmp_path / "api.db"
    core = Core(settings)
    monkeypatch.setattr(core, "models_using", lambda _sid: [])
    deciding, release = threading.Event(), threading.Event()
    real_check = retention.refuse_if_pinned
    calls = []

    def slow_check(pins: Pins, snapshot_id: str) -> None:
        real_check(pins, snapshot_id)
        calls.append(snapshot_id)
        if len(calls) == 2:  # the check under the exclusive lock, just before the move
            deciding.set()
            assert release.wait(30)

    monkeypatch.setattr(retention, "refuse_if_pinned", slow_check)
    store = SnapshotStore.of(settings)
    outcome: dict[str, str] = {}

    def other_process_pins() -> None:
        try:
            Pins(Database(db)).pin(sid, "cli", "keep it", exists=store.manifest,
                                   guard=store.shared)
            outcome["pinned"] = sid
        except SnapshotNotFound as exc:
            outcome["refused"] = exc.message

    with ThreadPoolExecutor(2) as pool:
        deleted = pool.submit(delete_unless_kept, core, Pins(Database(db)), sid)
        assert deciding.wait(30)
        pinned = pool.submit(other_process_pins)
        time.sleep(1.0)
        assert not pinned.done()  # waiting for the delete's lock
        release.set()
        deleted.result(30)
        pinned.result(30)
    assert list(outcome) == ["refused"] and f"no snapshot '{sid}'" in outcome["refused"]
    assert Pins(Database(db)).get(sid) is None
    assert not (Path(settings.snapshot_root) / sid).exists()

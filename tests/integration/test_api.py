"""The REST API against the real stack: `tidelog api serve` in a subprocess on a free
loopback port, driven over HTTP — snapshots, lineage, training, CDC, the auth matrix, an
API crash in the middle of a snapshot job, and a schemathesis run over every operation."""

from __future__ import annotations

import dataclasses
import json
import secrets
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from cdc.connector import ConnectorSpec, apply
from tests.integration.cdc_helpers import (
    cli_env,
    execute,
    private_settings,
    unique_name,
    wait_for_events,
)
from tests.unit.test_api import EXAMPLE, ROLE_OF, assert_error
from tidelog.settings import Settings
from tidelog.stack.process import free_port

pytestmark = pytest.mark.integration

CUSTOMERS = "public.api_customers"
BULK = "public.api_bulk"
BULK_ROWS = 150_000
RECIPE_MODULE = "api_recipe"
RECIPE = textwrap.dedent('''
    """A tiny recipe over public.api_customers, for the API's integration test."""
    import polars as pl

    from trainer.recipe import RecipeResult, recipe


    @recipe(tables=["public.api_customers"])
    def train(tables, params, seed):
        from sklearn.linear_model import LinearRegression

        frame = tables["public.api_customers"]
        x = frame.select(pl.col("id").cast(pl.Float64)).to_pandas()
        y = frame["balance"].cast(pl.Float64).to_numpy()
        model = LinearRegression().fit(x, y)
        return RecipeResult(model=model, metrics={"rows": float(len(x))}, features=x)
''')


class Server:
    """`tidelog api serve` as a child process; `kill()` is a crash, `stop()` a shutdown."""

    def __init__(self, settings: Settings, home: Path, app_dir: Path,
                 **extra_env: str) -> None:
        self.home = home
        self.app_dir = app_dir
        # No pipelines, but a directory for them: /pipelines answers, and unknown names 404.
        (home / "pipelines").mkdir(parents=True, exist_ok=True)
        self.env = cli_env(dataclasses.replace(settings, home=home),
                           TIDELOG_API_PIPELINES=str(home / "pipelines"), **extra_env)
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def cli(self, *args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "tidelog.cli", *args], env=self.env,
                             capture_output=True, text=True, timeout=60, check=True)
        return out.stdout.strip()

    def start(self) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        log = open(self.home / "api.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tidelog.cli", "api", "serve", "--port", str(port),
             "--app-dir", str(self.app_dir), "--log-level", "warning", "--no-access-log"],
            env=self.env, stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the API exited: {(self.home / 'api.log').read_text()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("the API did not come up in 60 s")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.kill()


class Client:
    def __init__(self, server: Server, keys: dict[str, str]) -> None:
        self.server = server
        self.keys = keys

    def request(self, method: str, path: str, role: str = "admin", **kw: Any
                ) -> httpx.Response:
        headers = {**({"Authorization": f"Bearer {self.keys[role]}"} if role else {}),
                   **kw.pop("headers", {})}
        return httpx.request(method, f"{self.server.url}{path}", headers=headers,
                             timeout=120, **kw)

    def get(self, path: str, role: str = "admin", **kw: Any) -> httpx.Response:
        return self.request("GET", path, role, **kw)

    def post(self, path: str, body: Any = None, role: str = "admin", **kw: Any
             ) -> httpx.Response:
        return self.request("POST", path, role, json=body, **kw)

    def wait(self, job_id: str, timeout: float = 300) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            job = self.get(f"/jobs/{job_id}").json()
            if job["state"] in ("succeeded", "failed"):
                return job
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} still {job.get('state')} after {timeout}s")

    def snapshot(self, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
        resp = self.post("/snapshots", body, role="writer", **kw)
        assert resp.status_code == 202, resp.text
        job = self.wait(resp.json()["id"])
        assert job["state"] == "succeeded", job
        return job


@pytest.fixture(scope="module")
def env(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    name = unique_name("api")
    root = tmp_path_factory.mktemp("apidata")
    local = private_settings(settings, root, name)
    execute(settings,
            "drop table if exists api_customers, api_bulk",
            "create table api_customers (id int primary key, name text, balance numeric(12, 2))",
            "alter table api_customers replica identity full",
            "insert into api_customers select g, 'c' || g, g * 1.5 from generate_series(1, 300) g",
            "create table api_bulk (id bigint primary key, payload text)")
    apply(local, ConnectorSpec(name, (CUSTOMERS, BULK), name), timeout=180)
    (root / "recipes").mkdir()
    (root / "recipes" / f"{RECIPE_MODULE}.py").write_text(RECIPE)
    return local


def _start(env: Settings, home: Path, **extra: str) -> tuple[Server, Client]:
    home.mkdir(parents=True, exist_ok=True)
    server = Server(env, home, Path(env.home) / "recipes", **extra)
    keys = {role: server.cli("api", "keys", "create", "--role", role, "--name", role)
            for role in ("reader", "writer", "admin")}
    server.start()
    return server, Client(server, {**keys, "": ""})


@pytest.fixture(scope="module")
def live(env: Settings) -> Iterator[Client]:
    server, client = _start(env, Path(env.home) / "api-home",
                            TIDELOG_API_RECIPES=RECIPE_MODULE)
    try:
        yield client
    finally:
        server.stop()


def _settle(env: Settings, marker: str) -> None:
    """Write a marker row and wait until Kafka has it: everything before is captured."""
    execute(env, "update api_customers set name = %s where id = 300", params=(marker,))
    wait_for_events(env, f"{env.topic_prefix}.{CUSTOMERS}", lambda ev: any(
        e.after and e.after.get("name") == marker for e in ev), timeout=90)


def _count(env: Settings, table: str) -> int:
    with psycopg.connect(env.postgres_dsn) as conn:
        row = conn.execute(f"select count(*) from {table}").fetchone()
    return int(row[0]) if row else 0


# -- tests -----------------------------------------------------------------------------

def test_health_readiness_and_metrics(live: Client) -> None:
    assert live.get("/healthz", role="").json() == {"status": "ok"}
    ready = live.get("/readyz", role="")
    assert ready.status_code == 200, ready.text
    assert set(ready.json()["checks"]) == {"postgres", "broker", "connect", "mlflow", "archive",
                                           "capture"}
    assert all(c["ok"] for c in ready.json()["checks"].values())
    assert "running, no stopped partition" in ready.json()["checks"]["capture"]["detail"]
    metrics = live.get("/metrics", role="")
    assert "tidelog_api_requests_total" in metrics.text
    assert live.get("/openapi.json", role="").json()["info"]["title"] == "tidelog"


def test_auth_matrix_on_every_operation(live: Client) -> None:
    safe = {  # never touch the test's own connector; a recipe the API may import
        ("POST", "/runs"): ("/runs", {"recipe": f"{RECIPE_MODULE}:nope",
                                      "snapshot_id": "0" * 16}),
        ("POST", "/cdc/connector/apply"): ("/cdc/connector/apply",
                                           {"tables": ["public.x"], "name": "no-such-conn"}),
        ("POST", "/cdc/connector/restart"): ("/cdc/connector/restart",
                                             {"name": "no-such-conn", "timeout": 1}),
    }
    roles = ("reader", "writer", "admin")
    for operation, needed in sorted(ROLE_OF.items()):
        if needed is None:
            continue
        method, path = operation
        url, body = safe.get(operation) or EXAMPLE.get(operation, (path, None))
        assert_error(live.request(method, url, role="", json=body), 401, "unauthorized")
        assert_error(live.request(method, url, role="", json=body,
                                  headers={"X-API-Key": "tlk_0123456789ab_wrong"}), 401)
        for role in roles:
            resp = live.request(method, url, role=role, json=body)
            if roles.index(role) < roles.index(needed):
                assert_error(resp, 403, "forbidden")
            else:
                assert resp.status_code not in (401, 403), (operation, role, resp.text)
                assert resp.status_code < 500, (operation, role, resp.text)
    # a key made over HTTP works at once and stops working at once when revoked
    made = live.post("/admin/keys", {"role": "reader", "name": "temp"}).json()
    assert live.get("/snapshots", role="", headers={"X-API-Key": made["key"]}).status_code == 200
    assert live.request("DELETE", f"/admin/keys/{made['id']}").status_code == 200
    assert_error(live.get("/snapshots", role="", headers={"X-API-Key": made["key"]}), 401)
    denied = live.get("/audit?result=denied&limit=1000").json()["items"]
    assert len(denied) >= 20


def test_snapshots_diff_verify_lineage_archive(live: Client, env: Settings) -> None:
    _settle(env, "first")
    first = live.snapshot({"tables": [CUSTOMERS]}, headers={"Idempotency-Key": "snap-1"})
    replay = live.post("/snapshots", {"tables": [CUSTOMERS]}, role="writer",
                       headers={"Idempotency-Key": "snap-1"})
    assert replay.json()["id"] == first["id"] and replay.headers["idempotent-replayed"]
    sid1 = first["result"]["snapshot_id"]
    manifest = live.get(f"/snapshots/{sid1}", role="reader").json()
    assert manifest["tables"][CUSTOMERS]["rows"] == _count(env, CUSTOMERS) == 300
    assert manifest["cut"] == first["plan"]["cut"]

    execute(env, "update api_customers set balance = balance + 1 where id = 1",
            "delete from api_customers where id = 2")
    _settle(env, "second")
    sid2 = live.snapshot({"tables": [CUSTOMERS]})["result"]["snapshot_id"]
    assert sid2 != sid1

    listed = [s["id"] for s in live.get(f"/snapshots?table={CUSTOMERS}").json()["items"]]
    assert listed[-2:] == [sid1, sid2]
    by_digest = live.get(f"/snapshots?digest={manifest['digest']}").json()["items"]
    assert [s["id"] for s in by_digest] == [sid1]
    page = live.get(f"/snapshots?table={CUSTOMERS}&limit=1").json()
    assert len(page["items"]) == 1 and page["next_cursor"]

    diff = live.get(f"/snapshots/diff?a={sid1}&b={sid2}", role="reader").json()
    changes = diff["tables"][CUSTOMERS]
    assert changes["updated"] >= 1 and changes["deleted"] == 1 and changes["inserted"] == 0

    report = live.post(f"/snapshots/{sid2}/verify", role="reader").json()
    assert report["ok"] is True and report["digest_recomputed"] == report["digest_recorded"]

    key = json.dumps({"id": 1})
    rows = live.get("/lineage/rows", role="reader",
                    params={"table": CUSTOMERS, "key": key}).json()
    seen = {s["snapshot_id"]: s for s in rows["snapshots"]}
    assert seen[sid1]["present"] and seen[sid2]["present"]
    assert seen[sid1]["version"] != seen[sid2]["version"]
    gone = live.get("/lineage/rows", params={"table": CUSTOMERS, "key": '{"id": 2}'}).json()
    assert {s["snapshot_id"]: s["present"] for s in gone["snapshots"]}[sid2] is False

    archive = live.get("/cdc/archive", role="reader").json()
    assert archive["broker"]["checked"] is True
    ours = [p for p in archive["partitions"] if p["topic"] == f"{env.topic_prefix}.{CUSTOMERS}"]
    assert ours and ours[0]["high_water_mark"] > 300
    assert ours[0]["same_log_as_broker"] is True and ours[0]["lag"] >= 0
    assert ours[0]["log_identity"]["cluster_id"]
    status = live.get(f"/cdc/connector?name={env.connector_name}", role="reader").json()
    assert status["connector"]["state"] == "RUNNING"

    assert live.post(f"/snapshots/{sid1}/pin", {"reason": "kept"}, role="writer").json()[
        "pinned"]
    assert_error(live.request("DELETE", f"/snapshots/{sid1}", role="writer"), 409,
                 "snapshot_pinned")
    live.post(f"/snapshots/{sid1}/unpin", role="writer")
    assert live.request("DELETE", f"/snapshots/{sid1}", role="writer").json() == {
        "deleted": sid1}
    assert_error(live.get(f"/snapshots/{sid1}"), 404, "snapshot_not_found")


def test_train_rebuild_lineage_and_delete_guard(live: Client, env: Settings) -> None:
    model = f"{env.topic_prefix}-model"
    assert_error(live.post("/runs", {"recipe": "os:system"}, role="writer"), 403,
                 "recipe_not_allowed")
    resp = live.post("/runs", {"recipe": f"{RECIPE_MODULE}:train", "seed": 1,
                               "register_as": model}, role="writer")
    job = live.wait(resp.json()["id"])
    assert job["state"] == "succeeded", job
    run_id, sid = job["result"]["run_id"], job["result"]["snapshot_id"]

    run = live.get(f"/runs/{run_id}", role="reader").json()
    assert run["snapshot_id"] == sid and run["cut"]["partitions"]
    lineage = live.get(f"/lineage/models/{model}", role="reader").json()
    assert lineage["run_id"] == run_id and lineage["snapshot_id"] == sid
    err = assert_error(live.request("DELETE", f"/snapshots/{sid}", role="writer"), 409,
                       "snapshot_in_use")
    assert err["details"]["model_versions"][0]["name"] == model

    rebuilt = live.wait(live.post(f"/runs/{run_id}/rebuild", {}, role="writer").json()["id"])
    assert rebuilt["state"] == "succeeded", rebuilt
    assert rebuilt["result"]["verified"] and rebuilt["result"]["dataset_match"]
    run = live.get(f"/runs/{run_id}").json()
    assert [r["verified"] for r in run["rebuilds"]] == [True]


# -- hostile input (issue 12) ------------------------------------------------------------

MIB = 1024 * 1024


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def _post_raw(url: str, headers: dict[str, str], total: int, chunked: bool
              ) -> tuple[int, int]:
    """(status, body bytes sent) of a POST /snapshots whose body is sent only for as long
    as no answer has come (an answer within a second of the headers means the server
    decided without the body)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    block = b"x" * (64 * 1024)
    frame = f"{len(block):x}\r\n".encode() + block + b"\r\n" if chunked else block
    framing = {"Transfer-Encoding": "chunked"} if chunked else {"Content-Length": str(total)}
    head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": host, **framing, **headers}.items())
    sent = 0
    data = b""
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(f"POST /snapshots HTTP/1.1\r\n{head}\r\n".encode())
        select.select([sock], [], [], 1.0)
        while sent < total and not select.select([sock], [], [], 0)[0]:
            try:
                sock.sendall(frame)
            except OSError:
                break
            sent += len(block)
        try:
            while b"\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0
    return status, sent


def test_big_bodies_are_refused_before_they_are_read(live: Client) -> None:
    assert live.server.proc is not None
    pid = live.server.proc.pid
    before = _rss(pid)
    writer = {"Authorization": f"Bearer {live.keys['writer']}",
              "Content-Type": "application/json"}
    for chunked in (False, True):
        status, sent = _post_raw(live.server.url, {"Content-Type": "application/json"},
                                 64 * MIB, chunked)
        assert (status, sent) == (401, 0), (chunked, status, sent)
    status, sent = _post_raw(live.server.url, writer, 64 * MIB, chunked=False)
    assert (status, sent) == (413, 0)
    grown = _rss(pid) - before
    print(f"\nAPI RSS {before / MIB:.0f} MiB, grew {grown / MIB:.1f} MiB over three "
          "refused 64 MiB POSTs")
    assert grown < 16 * MIB
    # the server still serves ordinary bodies
    assert live.post(f"/snapshots/{'0' * 16}/pin", {"reason": "x"},
                     role="writer").status_code == 404


def test_wrong_secrets_stay_cheap_on_the_real_server(live: Client) -> None:
    """200 wrong secrets for a real key id, 8 at a time (the issue saw the API grow by
    800 MB and a legitimate request slow from 0.13 to 2.4 s)."""
    made = live.post("/admin/keys", {"role": "reader", "name": "target"}).json()
    assert live.server.proc is not None
    pid = live.server.proc.pid
    # warm: the first served listing imports the snapshot stack (~100 MiB, ~1 s)
    assert live.get("/snapshots", role="reader").status_code == 200
    time.sleep(2)
    before = _rss(pid)
    http = httpx.Client(base_url=live.server.url, timeout=60)

    def guess(_: int) -> int:
        wrong = f"tlk_{made['id']}_{secrets.token_urlsafe(32)}"
        return http.get("/snapshots", headers={"X-API-Key": wrong}).status_code

    started = time.perf_counter()
    with http, ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(guess, range(200)))
    attack = time.perf_counter() - started
    grown = _rss(pid) - before
    statuses = {code: codes.count(code) for code in set(codes)}
    started = time.perf_counter()
    ok = live.get("/snapshots", role="", headers={"X-API-Key": made["key"]})
    legit = time.perf_counter() - started
    print(f"\n200 wrong secrets: {statuses} in {attack:.2f} s, RSS +{grown / MIB:.1f} MiB; "
          f"the real key then answered in {legit * 1000:.0f} ms")
    assert set(statuses) == {401, 429} and 10 <= statuses[401] <= 13, statuses
    # scrypt at 8 at a time would hold 128 MiB; what remains is threads and their
    # SQLite connections writing the 401s to the audit log
    assert grown < 64 * MIB
    assert attack < 20
    assert ok.status_code == 200 and legit < 1.0


def test_row_keys_beyond_64_bits_and_strict_bodies(live: Client) -> None:
    big = 99999999999999999999999999
    live.snapshot({"tables": [CUSTOMERS]})
    resp = live.get("/lineage/rows", role="reader",
                    params={"table": CUSTOMERS, "key": json.dumps({"id": big})})
    assert resp.status_code == 200, resp.text
    assert json.loads(resp.text)["key"] == {"id": big}
    assert resp.json()["snapshots"] and not any(s["present"] for s in resp.json()["snapshots"])
    err = assert_error(live.post("/runs/nope/rebuild", {"experiment": "x", "bogus": 1},
                                 role="writer"), 422, "validation_error")
    assert err["details"]["errors"][0]["field"] == "body.bogus"
    assert_error(live.request("POST", "/runs/nope/rebuild", role="writer", content=b"null",
                              headers={"Content-Type": "application/json"}), 422)
    options = live.request("OPTIONS", "/snapshots/diff")
    assert_error(options, 405, "method_not_allowed")
    assert options.headers["allow"] == "GET"
    assert_error(live.post("/runs", {"recipe": f"{RECIPE_MODULE}:pl.read_csv"},
                           role="writer"), 403, "recipe_not_allowed")
    report = live.get("/audit/verify").json()
    assert report["ok"] is True and report["entries"] > 10, report
    assert_error(live.get("/audit/verify", role="writer"), 403, "forbidden")


def test_api_crash_in_the_middle_of_a_snapshot_job(env: Settings) -> None:
    """The API process dies (as after kill -9) in the middle of a snapshot job, at a named
    step of the build: after the restart the job is re-queued, builds the cut it had
    planned, and asking for that cut again gives the same snapshot."""
    execute(env, f"insert into api_bulk select g, repeat('x', 40) || g "
                 f"from generate_series(1, {BULK_ROWS}) g")
    server, client = _start(env, Path(env.home) / "crash-home",
                            TIDELOG_CRASH_AT="snapshot.before_manifest")
    try:
        job_id = client.post("/snapshots", {"tables": [BULK]}, role="writer").json()["id"]
        assert server.proc is not None
        # Files written and synced, no manifest: the process exits there, no cleanup runs.
        assert server.proc.wait(timeout=600) == 137, "the job never reached its build"
        del server.env["TIDELOG_CRASH_AT"]
        server.start()
        job = client.wait(job_id)
        assert job["state"] == "succeeded", job  # re-queued, not left "running"
        assert job["attempts"] == 2
        result = job["result"]
        assert job["plan"]["cut"] == result["cut"]
        assert result["tables"][BULK]["rows"] >= 1

        again = client.snapshot({"tables": [BULK], "at": job["plan"]["cut"]})["result"]
        assert (again["snapshot_id"], again["digest"]) == (result["snapshot_id"],
                                                           result["digest"])
        assert again["tables"] == result["tables"]
        assert client.post(f"/snapshots/{again['snapshot_id']}/verify").json()["ok"]
        leftovers = [p.name for p in Path(env.snapshot_root).iterdir()
                     if p.name.startswith(".tmp-")]
        assert not leftovers
        restarted = [e for e in client.get("/audit?action=job.snapshot.create&limit=1000")
                     .json()["items"] if e["job_id"] == job_id]
        assert [e["result"] for e in restarted] == ["succeeded"]
    finally:
        server.stop()


@pytest.fixture(scope="module")
def fuzz_api(env: Settings) -> Iterator[Client]:
    """A second API for the fuzzer: its own home and a connector and topic prefix that do
    not exist, so random requests cannot touch the CDC pipeline of the other tests."""
    fuzz_env = dataclasses.replace(env, connector_name="fuzz-no-such-connector",
                                   topic_prefix="fuzznothing",
                                   snapshot_root=str(Path(env.home) / "fuzz-snapshots"))
    # Bodies up to 64 MiB reach validation: generated bodies over the default 1 MiB limit
    # would get 413 before their schema is checked (that limit has its own test above).
    server, client = _start(fuzz_env, Path(env.home) / "fuzz-home",
                            TIDELOG_API_MAX_BODY=str(64 << 20))
    try:
        yield client
        text = client.get("/metrics", role="").text
        sent = sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
                   if line.startswith("tidelog_api_requests_total"))
        statuses = sorted({line.split('status="')[1].split('"')[0] for line in text.splitlines()
                           if line.startswith("tidelog_api_requests_total")})
        print(f"\nfuzzed API answered {sent} requests; statuses {statuses}")
        assert not [s for s in statuses if s.startswith("5")]
    finally:
        server.stop()


@pytest.fixture
def live_schema(fuzz_api: Client) -> Any:
    return schemathesis.openapi.from_url(f"{fuzz_api.server.url}/openapi.json")


try:
    import schemathesis
except ImportError:  # the pytest plugin is optional; everything else runs without it
    schemathesis = None

if schemathesis is not None:
    from hypothesis import HealthCheck, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        ignored_auth,
        negative_data_rejection,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
        unsupported_method,
    )

    CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
              response_schema_conformance, response_headers_conformance,
              negative_data_rejection, ignored_auth, unsupported_method]
    schema = schemathesis.pytest.from_fixture("live_schema")

    @schema.parametrize()
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    def test_schemathesis_every_operation(case: Any, fuzz_api: Client) -> None:
        """Hundreds of generated requests: never a 5xx, always the documented schema."""
        case.call_and_validate(
            headers={"Authorization": f"Bearer {fuzz_api.keys['admin']}"}, checks=CHECKS)
else:
    def test_schemathesis_every_operation() -> None:
        pytest.skip("schemathesis is not installed")

"""Issue 12 on the real stack: never build from a damaged archive segment (12.1), and no
secret from the settings reaches a reader, a file, MLflow or the API log (12.3)."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path
from urllib.parse import urlsplit

import mlflow
import polars as pl
import pytest

from cdc.connector import ConnectorSpec, apply
from snapshotter.archive import Archive
from snapshotter.snapshots import create_snapshot, list_snapshots, open_snapshot
from tests.integration.cdc_helpers import execute, private_settings, unique_name, wait_for_events
from tests.integration.test_api import Client, Server
from tests.unit.test_api import assert_error
from tidelog import cli
from tidelog.settings import Settings
from tidelog.stack.process import free_port

pytestmark = pytest.mark.integration

ITEMS = "public.integ_items"
PW_DB, PW_CONNECT, PW_MLFLOW = "Db-s3cret-91", "Connect-s3cret-92", "Mlflow-s3cret-93"
RECIPE_MODULE = "integ_recipe"
RECIPE = textwrap.dedent('''
    import polars as pl

    from trainer.recipe import RecipeResult, recipe


    @recipe(tables=["public.integ_items"])
    def train(tables, params, seed):
        from sklearn.linear_model import LinearRegression

        frame = tables["public.integ_items"]
        x = frame.select(pl.col("id").cast(pl.Float64)).to_pandas()
        model = LinearRegression().fit(x, frame["id"].cast(pl.Float64).to_numpy())
        return RecipeResult(model=model, metrics={"rows": float(len(x))}, features=x)
''')


@pytest.fixture(scope="module")
def env(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    name = unique_name("integ")
    root = tmp_path_factory.mktemp("integdata")
    local = private_settings(settings, root, name)
    execute(settings, "drop table if exists integ_items",
            "create table integ_items (id int primary key, name text)",
            "insert into integ_items select g, 'n' || g from generate_series(1, 200) g")
    apply(local, ConnectorSpec(name, (ITEMS,), name), timeout=180)
    (root / "recipes").mkdir()
    (root / "recipes" / f"{RECIPE_MODULE}.py").write_text(RECIPE)
    return local


def _settle(env: Settings, key: int, name: str) -> None:
    execute(env, "update integ_items set name = %s where id = %s", params=(name, key))
    wait_for_events(env, f"{env.topic_prefix}.{ITEMS}", lambda ev: any(
        e.after and e.after.get("name") == name for e in ev), timeout=90)


def _cli(env: Settings, monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    for variable in [v for v in os.environ if v.startswith("TIDELOG_")]:
        monkeypatch.delenv(variable)
    for variable, value in env.to_environ().items():
        monkeypatch.setenv(variable, value)
    return cli.main(list(args))


def test_snapshot_create_refuses_a_damaged_segment(
        env: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
        ) -> None:
    """Issue 12.1 as reported: change an archived segment, insert a row, then
    `snapshot create --at latest --full` exited 0 with the wrong value."""
    _settle(env, 149, "n149-live")
    base = create_snapshot(env, [ITEMS], "latest")
    topic = f"{env.topic_prefix}.{ITEMS}"
    archive = Archive(env.archive_root)
    segments = archive.segments(topic, 0, archive.generations(topic, 0)[-1].number)
    # the newest segment holding key 149: the one its current value comes from
    victim = [Path(s.path) for s in segments
              if pl.read_parquet(s.path).filter(pl.col("id") == 149).height][-1]
    original = victim.read_bytes()
    events = pl.read_parquet(victim)
    forged = events.with_columns(pl.when(pl.col("id") == 149).then(pl.lit("n133"))
                                 .otherwise(pl.col("name")).alias("name"))
    forged.write_parquet(victim, compression="zstd")  # valid Parquet, same name, wrong value
    execute(env, "insert into integ_items values (1001, 'after the damage')")
    _settle(env, 1001, "after the damage, settled")
    capsys.readouterr()

    for extra in (["--full"], []):  # full, then incremental on the intact base
        code = _cli(env, monkeypatch, "snapshot", "create", "--tables", ITEMS,
                    "--at", "latest", *extra)
        err = capsys.readouterr().err
        assert code == 2, err
        assert f"{topic}[0]" in err and victim.name in err and "fails its checksum" in err
        assert "tidelog archive run" in err and "tidelog archive verify" in err
    assert [m.id for m in list_snapshots(env)] == [base.id], "nothing was published"

    assert _cli(env, monkeypatch, "archive", "verify", "--json") == 1
    report = json.loads(capsys.readouterr().out)
    assert report["damaged"] == [str(victim)] and "archive run" in report["hint"]

    # Restored from a backup (the original bytes), the same command builds the right value.
    victim.write_bytes(original)
    assert archive.damaged([s for s in segments if Path(s.path) == victim]) == []
    assert _cli(env, monkeypatch, "snapshot", "create", "--tables", ITEMS, "--at", "latest",
                "--full", "--json") == 0
    manifest = json.loads(capsys.readouterr().out)
    table = open_snapshot(env, manifest["id"]).table(ITEMS)
    assert table.filter(pl.col("id") == 149)["name"].to_list() == ["n149-live"]


def _files_containing(root: Path, secrets: tuple[str, ...]) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path}: {s}" for s in secrets if s.encode() in data]
    return found


def test_no_secret_reaches_a_reader_a_file_mlflow_or_the_log(env: Settings,
                                                            tmp_path: Path) -> None:
    """Issue 12.3: a key/value DSN's password was served to readers from the manifest and
    the run, written to MLflow, and credentials in the Connect / MLflow URLs appeared in
    reader-visible errors and the API log."""
    pg = urlsplit(env.postgres_dsn)
    kv_dsn = (f"host={pg.hostname} port={pg.port} user={pg.username} "
              f"password='{PW_DB}' dbname={pg.path.lstrip('/')}")
    ml = urlsplit(env.mlflow_uri)
    mlflow_uri = f"{ml.scheme}://tidelog:{PW_MLFLOW}@{ml.netloc}{ml.path}"
    dead_connect = f"http://connect:{PW_CONNECT}@127.0.0.1:{free_port()}"
    home = Path(env.home) / "api-secrets"
    home.mkdir()
    server = Server(env, home, Path(env.home) / "recipes",
                    TIDELOG_POSTGRES_DSN=kv_dsn, TIDELOG_MLFLOW_URI=mlflow_uri,
                    TIDELOG_CONNECT_URL=dead_connect, TIDELOG_API_RECIPES=RECIPE_MODULE)
    keys = {role: server.cli("api", "keys", "create", "--role", role, "--name", role)
            for role in ("reader", "writer", "admin")}
    server.start()
    live = Client(server, {**keys, "": ""})
    secrets = (PW_DB, PW_CONNECT, PW_MLFLOW)
    try:
        _settle(env, 7, "secrets test")
        # The API's Connect URL is dead on purpose, so a "latest" cut must be allowed stale;
        # the stale reasons (which name that URL) are recorded too, and checked below.
        sid = live.snapshot({"tables": [ITEMS], "allow_stale": True})["result"]["snapshot_id"]
        snap = live.get(f"/snapshots/{sid}", role="reader")
        assert snap.status_code == 200, snap.text
        assert snap.json()["source"]["database"] == kv_dsn.replace(f"'{PW_DB}'", "***")

        trained = live.wait(live.post("/runs", {"recipe": f"{RECIPE_MODULE}:train",
                                                "snapshot_id": sid}, role="writer").json()["id"])
        assert trained["state"] == "succeeded", trained
        run_id = trained["result"]["run_id"]
        run = live.get(f"/runs/{run_id}", role="reader")
        assert run.status_code == 200, run.text
        assert "password=***" in run.json()["source"]["database"]

        # Errors a reader sees that name the Connect and MLflow URLs.
        connect_error = assert_error(live.get("/cdc/connector", role="reader"), 503,
                                     "connector_unavailable")
        assert "connect:***@127.0.0.1" in connect_error["message"]
        unknown = live.get(f"/runs/{'0' * 32}", role="reader")
        assert unknown.status_code == 404 and "tidelog:***@" in unknown.text
        ready = live.get("/readyz", role="")  # anyone on the network may ask
        checks = assert_error(ready, 503, "not_ready")["details"]["checks"]
        assert checks["connect"]["ok"] is False and checks["mlflow"]["ok"] is True

        for response in (snap, run, unknown, ready, live.get("/jobs", role="reader"),
                         live.get(f"/jobs/{trained['id']}", role="reader"),
                         live.get("/cdc/archive", role="reader")):
            for secret in secrets:
                assert secret not in response.text, (response.url, secret)
    finally:
        server.stop()

    client = mlflow.MlflowClient(env.mlflow_uri)
    tags = client.get_run(run_id).data.tags
    assert tags["tidelog.source.database"] == kv_dsn.replace(f"'{PW_DB}'", "***")
    assert not [k for k, v in tags.items() if any(s in v for s in secrets)]
    artefact = mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(tmp_path),
                                                   tracking_uri=env.mlflow_uri)
    assert _files_containing(Path(artefact), secrets) == []
    assert _files_containing(Path(env.snapshot_root), secrets) == []
    assert _files_containing(Path(env.archive_root), secrets) == []
    log = (home / "api.log").read_text()
    assert log, "the API wrote a log (the unreachable Connect)"
    assert not [s for s in secrets if s in log], log[-2000:]
    assert _files_containing(home, secrets) == []

"""`GET /models/{name}/monitor` over the real API (uvicorn on loopback) and a real MLflow
store, with snapshots from the trainer's in-memory fake: a model trained on one state of
the tables, the payments changed after it, the report says which feature moved — as JSON,
and as HTML that headless Chromium (Debian's package, through Playwright) renders."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import polars as pl
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.config import ApiConfig
from examples.churn import demo_tables
from pipelines.registry import Registry
from tests.unit.live_server import serving
from tidelog.settings import Settings
from trainer.testing import FakeSnapshotProvider
from trainer.train import train

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]


@pytest.fixture(scope="module", autouse=True)
def _quiet(quiet_mlflow: None) -> None:
    pass



@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    home = tmp_path_factory.mktemp("monitor-home")
    settings = Settings(home=home, mlflow_uri=f"sqlite:///{home}/mlflow.db",
                        archive_root=str(home / "archive"), snapshot_root=str(home / "snapshots"))
    fake = FakeSnapshotProvider()
    for name, frame in demo_tables(customers=150).items():
        fake.put(name, frame)
    trained = train(settings, "examples.churn:train", params={"model": "logreg"}, seed=1,
                    register="churn", provider=fake)
    Registry(settings, "tidelog").set_alias("churn", "champion", "1")
    # every payment triples: total_paid moves, nothing else the recipe computes does
    fake.change("public.payments", lambda f: f.with_columns(pl.col("amount") * 3))
    app = create_app(settings, config=ApiConfig(db_path=home / "api.db",
                                                recipe_modules=("examples",)), provider=fake)
    with TestClient(app) as client:
        _, reader = app.state.tidelog.keys.create("reader", "auditor", "test")
        with serving(app) as url:
            yield {"client": client, "key": reader, "trained": trained, "home": home,
                   "url": url, "app": app}


def _get(world: dict[str, Any], url: str) -> Any:
    return world["client"].get(url, headers={"Authorization": f"Bearer {world['key']}"})


def test_json_report_names_the_moved_feature_and_the_lineage(world: dict[str, Any]) -> None:
    resp = _get(world, "/models/churn/monitor?alias=champion&against=latest")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    trained = world["trained"]
    assert body["dataset"]["drifted_columns"] == ["total_paid"]
    assert body["dataset"]["drifted"] is False  # 1 of 6 features
    assert body["model"]["version"] == "1" and body["model"]["run_id"] == trained.run_id
    assert body["model"]["snapshot_id"] == trained.snapshot_id
    assert body["model"]["cut_digest"] == trained.manifest.digest
    assert body["current"]["basis"] == "snapshot"
    assert body["current"]["snapshot_id"] != trained.snapshot_id
    paid = next(f for f in body["features"] if f["column"] == "total_paid")
    assert paid["method"] == "ks" and paid["score"] < 0.05 and paid["psi_drifted"]
    same = _get(world, f"/models/churn/monitor?against={trained.snapshot_id}").json()
    assert same["dataset"]["drifted_columns"] == [] and same["prediction"]["drifted"] is False


def test_errors_keep_the_json_shape(world: dict[str, Any]) -> None:
    missing = _get(world, "/models/churn/monitor?alias=nobody&against=latest")
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "monitor_error"
    assert world["client"].get("/models/churn/monitor").status_code == 401
    assert _get(world, "/models/churn/monitor?against=../x").status_code == 422


def test_the_api_runs_only_allowed_recipes(world: dict[str, Any]) -> None:
    state = world["app"].state.tidelog
    config = state.config
    state.config = dataclasses.replace(config, recipe_modules=())
    try:
        resp = _get(world, "/models/churn/monitor?against=latest")
        assert resp.status_code == 403
        assert resp.json()["error"]["code"] == "recipe_not_allowed"
    finally:
        state.config = config


def test_chromium_renders_the_html_report(world: dict[str, Any]) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(
                extra_http_headers={"Authorization": f"Bearer {world['key']}"})
            page = context.new_page()
            page.goto(f"{world['url']}/models/churn/monitor?against=latest&format=html")
            page.wait_for_selector("#features")
            drifted = page.locator("#features tr.drifted td:first-child").all_text_contents()
            assert [d.strip() for d in drifted] == ["total_paid"]
            row = page.locator('#features tr[data-feature="total_paid"]')
            assert row.locator("td.drift-cell").inner_text().strip() == "yes"
            assert page.locator('#features tr[data-feature="mean_fee"] td.drift-cell'
                                ).inner_text().strip() == "no"
            assert page.locator("#features tr").count() == 1 + 6
            assert "No dataset drift" in page.inner_text("#verdict")
            assert world["trained"].run_id in page.inner_text("#lineage")
            svg = row.locator("svg").bounding_box()
            assert svg is not None and svg["width"] >= 300 and svg["height"] >= 100
            assert row.locator("rect.cur").count() > 0
        finally:
            browser.close()


def test_the_audit_pages_link_to_the_drift_report(world: dict[str, Any]) -> None:
    client = world["client"]
    signed_out = client.get("/ui/monitor/churn", follow_redirects=False)
    assert signed_out.status_code == 303
    client.cookies.set("tidelog_key", world["key"])  # signed in, as the login page does
    try:
        page = client.get("/ui/models/churn/1")
        assert page.status_code == 200, page.text
        assert 'href="/ui/monitor/churn?alias=champion"' in page.text
        report = client.get("/ui/monitor/churn?alias=champion&against=latest")
        assert report.status_code == 200, report.text
        assert report.headers["content-type"].startswith("text/html")
        assert "total_paid" in report.text and "churn" in report.text
    finally:
        client.cookies.clear()

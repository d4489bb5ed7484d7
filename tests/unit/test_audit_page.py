"""The audit pages: served by the real API (uvicorn on loopback) over a real MLflow store,
read by headless Chromium (Debian's package) through Playwright, and by the test client.

The snapshots come from the trainer's in-memory fake snapshotter; everything else is real."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.config import ApiConfig
from examples.churn import demo_tables
from tests.unit.live_server import serving
from tidelog.settings import Settings
from trainer.testing import FakeSnapshotProvider
from trainer.train import TrainResult, train

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]


@pytest.fixture(scope="module", autouse=True)
def _quiet(quiet_mlflow: None) -> None:
    pass


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    home = tmp_path_factory.mktemp("audit-home")
    settings = Settings(home=home, mlflow_uri=f"sqlite:///{home}/mlflow.db",
                        archive_root=str(home / "archive"), snapshot_root=str(home / "snapshots"))
    fake = FakeSnapshotProvider()
    for name, frame in demo_tables(customers=60).items():
        fake.put(name, frame)
    first = train(settings, "examples.churn:train", params={"model": "logreg"}, seed=1,
                  register="churn", provider=fake)
    fake.change("public.customers", lambda f: f.filter(f["id"] != 7))
    second = train(settings, "examples.churn:train", params={"model": "logreg"}, seed=1,
                   register="churn", provider=fake)
    app = create_app(settings, config=ApiConfig(db_path=home / "api.db"), provider=fake)
    with TestClient(app) as client:
        _, reader = app.state.tidelog.keys.create("reader", "auditor", "test")
        with serving(app) as url:
            yield {"client": client, "key": reader, "first": first, "second": second,
                   "url": url, "home": home}



def _get(world: dict[str, Any], url: str, **kw: Any) -> Any:
    return world["client"].get(url, headers={"Authorization": f"Bearer {world['key']}"},
                               follow_redirects=False, **kw)


def test_pages_need_a_key_and_the_cookie_only_reads(world: dict[str, Any]) -> None:
    client = world["client"]
    resp = client.get("/ui/", follow_redirects=False)
    assert resp.status_code == 303 and resp.headers["location"] == "/ui/login"
    bad = client.post("/ui/login", content="key=tlk_nope_nope",
                      headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert bad.status_code == 401 and "unknown or revoked" in bad.text
    ok = client.post("/ui/login", content=f"key={world['key']}", follow_redirects=False,
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert ok.status_code == 303
    cookie = ok.cookies.get("tidelog_key")
    assert cookie == world["key"]
    assert "HttpOnly" in ok.headers["set-cookie"] and "SameSite=strict" in ok.headers["set-cookie"]
    client.cookies.set("tidelog_key", cookie, path="/")
    try:
        page = client.get("/ui/")
        assert page.status_code == 200 and "churn" in page.text
        # The cookie opens read-only pages only: the JSON API and every write ignore it.
        assert client.get("/snapshots").status_code == 401
        assert client.post("/snapshots", json={"tables": ["public.customers"]}
                           ).status_code == 401
    finally:
        client.cookies.clear()


def test_model_page_names_run_snapshot_cut_and_source(world: dict[str, Any]) -> None:
    first: TrainResult = world["first"]
    resp = _get(world, f"/ui/models/churn/{first.registered_version}")
    assert resp.status_code == 200, resp.text
    html = resp.text
    assert first.run_id in html and first.manifest.id in html and first.manifest.digest in html
    for name, table in first.manifest.tables.items():
        assert name in html and table.digest in html
    for part in first.manifest.cut.partitions:
        assert f"{part.start} … {part.end - 1} (end {part.end})" in html
    assert html.count('<g class="node ') == 3 + len(first.manifest.tables) + len(
        first.manifest.cut.partitions) + 1
    # one arrow per step, each table to its own topic
    assert html.count("<line ") == 1 + 1 + 2 * len(first.manifest.tables) + len(
        first.manifest.cut.partitions)
    assert "default-src 'none'" in resp.headers["content-security-policy"]


def test_row_search_tells_which_models_saw_the_row(world: dict[str, Any]) -> None:
    first, second = world["first"], world["second"]
    resp = _get(world, "/ui/rows", params={"table": "public.customers",
                                           "key": json.dumps({"id": 7})})
    assert resp.status_code == 200, resp.text
    saw = resp.text.split("Models that saw this row:")[1]
    assert f"churn/{first.registered_version}" in saw
    assert f"churn/{second.registered_version}" not in saw  # id 7 was gone by then
    bad = _get(world, "/ui/rows", params={"table": "public.customers", "key": "not json"})
    assert bad.status_code == 422 and "JSON object" in bad.text


def test_chromium_signs_in_and_renders_the_lineage_graph(world: dict[str, Any],
                                                         tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    first: TrainResult = world["first"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.goto(f"{world['url']}/ui/")
            assert page.url.endswith("/ui/login")
            page.fill("input[name=key]", world["key"])
            page.click("button[type=submit]")
            page.wait_for_url(f"{world['url']}/ui/")
            page.click(f"text=v{first.registered_version}")
            page.wait_for_selector("#lineage-graph")
            titles = page.locator("#lineage-graph text.title").all_text_contents()
            assert titles[0] == f"churn v{first.registered_version}"
            assert f"snapshot {first.manifest.id}" in titles
            box = page.locator("#lineage-graph").bounding_box()
            assert box is not None and box["width"] > 1000 and box["height"] > 100
            shot = tmp_path / "model.png"
            page.screenshot(path=str(shot), full_page=True)
            _assert_shows_the_graph(shot)
            page.goto(f"{world['url']}/ui/rows")
            page.fill("input[name=table]", "public.customers")
            page.fill("input[name=key]", '{"id": 7}')
            page.click("button[type=submit]")
            page.wait_for_selector("table.row-lineage")
            assert f"churn/{first.registered_version}" in page.inner_text("main")
        finally:
            browser.close()


def _assert_shows_the_graph(png: Path) -> None:
    """The screenshot holds the graph's node colours: the page was really drawn."""
    from PIL import Image  # matplotlib's, through mlflow

    with Image.open(png) as image:
        colours = {c for _, c in image.convert("RGB").getcolors(maxcolors=1 << 24) or []}
    for hex_colour in ("e3efff", "eaf7ee", "fff4df"):  # model, run, snapshot boxes
        assert tuple(bytes.fromhex(hex_colour)) in colours, hex_colour

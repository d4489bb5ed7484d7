"""The retention audit page and `POST /gc`: the real API (uvicorn on loopback) over a real
MLflow store, read by headless Chromium (Debian's package) through Playwright and by the
test client. Snapshots come from the trainer's in-memory fake snapshotter; the erasure
ledger is written here in the format `tidelog erase` appends."""

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
from tests.unit.test_audit_page import CHROMIUM, CHROMIUM_ARGS
from tidelog.settings import Settings
from trainer.exclusions import ExclusionStore
from trainer.rebuild import rebuild
from trainer.testing import FakeSnapshotProvider
from trainer.train import train

# The shape trainer/erasure.py appends to the ledger.
LEDGER_ENTRY = {"id": "era_0001", "table": "public.customers",
                "subject": "hmac-sha256:5f0c2d9e",
                "requested_at": "2026-11-30T08:59:58+00:00",
                "completed_at": "2026-11-30T09:00:00+00:00", "actor": "api:dpo",
                "reason": "GDPR art. 17 request #881", "segments": [],
                "snapshots": {"s1": {"rows": 1}, "s2": {"rows": 1}},
                "runs": {"r1": {"tables": {}}},
                "model_versions": [{"name": "churn", "version": "1"}]}


@pytest.fixture(scope="module", autouse=True)
def _quiet(quiet_mlflow: None) -> None:
    pass


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    home = tmp_path_factory.mktemp("retention-home")
    settings = Settings(home=home, mlflow_uri=f"sqlite:///{home}/mlflow.db",
                        archive_root=str(home / "archive"), snapshot_root=str(home / "snapshots"))
    (home / "erasures").mkdir()
    (home / "erasures" / "ledger.jsonl").write_text(json.dumps(LEDGER_ENTRY) + "\n")
    exclusion = ExclusionStore.for_settings(settings).add(
        "public.customers", {"id": 3}, "duplicate sign-up", by="ana")
    fake = FakeSnapshotProvider()
    for name, frame in demo_tables(customers=60).items():
        fake.put(name, frame)
    registered = train(settings, "examples.churn:train", params={"model": "logreg"}, seed=1,
                       register="churn", provider=fake)
    fake.change("public.customers", lambda f: f.filter(f["id"] != 7))
    unregistered = train(settings, "examples.churn:train", params={"model": "logreg"},
                         seed=1, provider=fake)
    fake.change("public.customers", lambda f: f.filter(f["id"] != 8))
    pinned = train(settings, "examples.churn:train", params={"model": "logreg"}, seed=1,
                   provider=fake)
    app = create_app(settings, config=ApiConfig(db_path=home / "api.db"), provider=fake)
    with TestClient(app) as client:
        keys = app.state.tidelog.keys
        _, reader = keys.create("reader", "auditor", "test")
        admin_info, admin = keys.create("admin", "ops", "test")
        with serving(app) as url:
            yield {"client": client, "reader": reader, "admin": admin, "admin_id": admin_info.id,
                   "settings": settings, "fake": fake, "registered": registered,
                   "unregistered": unregistered, "pinned": pinned, "exclusion": exclusion,
                   "url": url}


def _as(world: dict[str, Any], role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {world[role]}"}


@pytest.fixture(scope="module")
def collected(world: dict[str, Any]) -> dict[str, Any]:
    """A dry run, then the real gc, through the API (nothing young or newest is kept)."""
    client = world["client"]
    pin = client.post(f"/snapshots/{world['pinned'].snapshot_id}/pin",
                      json={"reason": "quarterly audit"}, headers=_as(world, "admin"))
    assert pin.status_code == 200, pin.text
    body = {"keep_days": 0, "keep_snapshots": 0}
    dry = client.post("/gc", json={**body, "dry_run": True}, headers=_as(world, "admin"))
    assert dry.status_code == 200, dry.text
    snapshots = Path(world["settings"].snapshot_root)
    still_there = {p.name for p in snapshots.iterdir() if not p.name.startswith(".")}
    real = client.post("/gc", json={**body, "dry_run": False}, headers=_as(world, "admin"))
    assert real.status_code == 200, real.text
    return {"dry": dry.json(), "real": real.json(), "before": still_there}


def test_gc_keeps_what_the_registered_model_and_the_pin_need(world: dict[str, Any],
                                                             collected: dict[str, Any]
                                                             ) -> None:
    registered, unregistered, pinned = (world["registered"], world["unregistered"],
                                        world["pinned"])
    dry = collected["dry"]
    kept = {s["snapshot_id"]: s["why"] for s in dry["keep"]["snapshots"]}
    assert set(kept) == {registered.snapshot_id, pinned.snapshot_id}
    assert kept[registered.snapshot_id] == [
        f"model version churn/{registered.registered_version}, run {registered.run_id}"]
    assert kept[pinned.snapshot_id] == [
        f"pinned snapshot {pinned.snapshot_id} (pinned by {world['admin_id']}: "
        "quarterly audit)"]
    assert [s["snapshot_id"] for s in dry["delete"]["snapshots"]] == [
        unregistered.snapshot_id]
    # the dry run deleted nothing; the real one deleted exactly the plan
    assert dry["dry_run"] is True and "result" not in dry
    assert unregistered.snapshot_id in collected["before"]
    assert collected["real"]["result"]["deleted_snapshots"] == [unregistered.snapshot_id]
    snapshots = Path(world["settings"].snapshot_root)
    assert not (snapshots / unregistered.snapshot_id).exists()
    assert (snapshots / registered.snapshot_id / "manifest.json").exists()
    assert (snapshots / pinned.snapshot_id / "manifest.json").exists()
    # the registered model still rebuilds exactly (its exclusion set included)
    report = rebuild(world["settings"], registered.run_id, provider=world["fake"])
    assert report.verified and report.predictions_rebuilt == registered.predictions_sha256


def test_gc_needs_an_admin_and_refuses_bad_options(world: dict[str, Any]) -> None:
    client = world["client"]
    resp = client.post("/gc", json={"dry_run": True}, headers=_as(world, "reader"))
    assert resp.status_code == 403
    resp = client.post("/gc", json={"keep_days": -1}, headers=_as(world, "admin"))
    assert resp.status_code == 422
    resp = client.post("/gc", content=b"null", headers={**_as(world, "admin"),
                                                        "content-type": "application/json"})
    assert resp.status_code == 422


def test_retention_page_shows_ledger_exclusions_and_what_gc_kept(
        world: dict[str, Any], collected: dict[str, Any]) -> None:
    resp = world["client"].get("/ui/retention", headers=_as(world, "reader"))
    assert resp.status_code == 200, resp.text
    html = resp.text
    ledger = html.split('<table class="erasures">')[1].split("</table>")[0]
    for text in ("era_0001", "GDPR art. 17 request #881", "hmac-sha256:5f0c2d9e",
                 "2026-11-30T09:00:00+00:00", "api:dpo", "2 snapshots", "1 runs",
                 "1 model versions"):
        assert text in ledger, text
    active = html.split('<table class="exclusions">')[1].split("</table>")[0]
    assert world["exclusion"].id in active and "duplicate sign-up" in active
    assert "{&#34;id&#34;: 3}" in active or '{"id": 3}' in active
    past = html.split('<table class="gc-runs">')[1].split("</table>")[0]
    assert world["unregistered"].snapshot_id in past  # deleted by the gc above
    assert f"model version churn/{world['registered'].registered_version}" in past
    keep = html.split('<table class="gc-keep">')[1].split("</table>")[0]
    assert world["registered"].snapshot_id in keep


def test_model_page_names_the_exclusion_set(world: dict[str, Any]) -> None:
    registered = world["registered"]
    resp = world["client"].get(f"/ui/models/churn/{registered.registered_version}",
                               headers=_as(world, "reader"))
    assert resp.status_code == 200, resp.text
    assert "trained without exclusion set" in resp.text
    assert registered.tags["tidelog.exclusions.id"] in resp.text
    assert "public.customers 1" in resp.text  # id 3 was left out


def test_a_broken_ledger_line_is_reported_not_fatal(world: dict[str, Any], tmp_path: Path
                                                    ) -> None:
    from api.audit_page import erasure_ledger

    (tmp_path / "erasures").mkdir()
    (tmp_path / "erasures" / "ledger.jsonl").write_text(
        json.dumps(LEDGER_ENTRY) + "\n{torn\n[1]\n")
    entries, problem = erasure_ledger(tmp_path)
    assert [e["id"] for e in entries] == ["era_0001"]
    assert problem is not None and problem.startswith("2 line(s)")
    assert erasure_ledger(tmp_path / "none") == ([], None)


def test_chromium_reads_the_retention_page(world: dict[str, Any], collected: dict[str, Any],
                                           tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{world['url']}/ui/login")
            page.fill("input[name=key]", world["reader"])
            page.click("button[type=submit]")
            page.wait_for_url(f"{world['url']}/ui/")
            page.click("text=erasures, exclusions, retention")
            page.wait_for_selector("table.gc-keep")
            assert page.locator("table.erasures td").first.inner_text() == "era_0001"
            exclusions = page.inner_text("table.exclusions")
            assert world["exclusion"].id in exclusions and "duplicate sign-up" in exclusions
            keep = page.inner_text("table.gc-keep")
            assert world["registered"].snapshot_id in keep
            assert "model version churn/" in keep and "pinned snapshot" in keep
            shot = tmp_path / "retention.png"
            page.screenshot(path=str(shot), full_page=True)
            _assert_is_the_page(shot)
        finally:
            browser.close()


def _assert_is_the_page(png: Path) -> None:
    """The screenshot was drawn: the header's colour and the table headers' are in it,
    and the page is taller than one screen of tables."""
    from PIL import Image  # matplotlib's, through mlflow

    with Image.open(png) as image:
        colours = {c for _, c in image.convert("RGB").getcolors(maxcolors=1 << 24) or []}
        assert image.size[1] > 600
    for hex_colour in ("17324d", "eef1f5"):  # header bar, table headings
        assert tuple(bytes.fromhex(hex_colour)) in colours, hex_colour

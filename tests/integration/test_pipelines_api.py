"""Issue 14, item 4 on the real stack: a retrain requested over HTTP reaches the pipeline's
worker through the broker, trains once, and the history endpoint names the request.

Real Postgres, Debezium in Kafka Connect, the Tansu broker and MLflow of the session stack;
the API is the real application (real snapshotter) under the TestClient.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.config import ApiConfig
from examples.shop import Shop
from pipelines.feed import read_events
from pipelines.registry import Registry
from pipelines.worker import Worker
from tests.integration import test_loop
from tests.integration.test_loop import LENIENT, _write
from tidelog.events import event_id, load_schema
from tidelog.settings import Settings

pytestmark = pytest.mark.integration

shop_env = test_loop.shop_env  # a shop schema captured under its own topic prefix
NEVER = 10**9  # a changed_rows threshold no test reaches: only the request may fire


@dataclasses.dataclass
class Served:
    client: TestClient
    headers: dict[str, dict[str, str]]
    key_ids: dict[str, str]
    app: Any


@pytest.fixture(scope="module")
def served(shop_env: tuple[Settings, Shop, Path]) -> Iterator[Served]:
    env, _shop, root = shop_env
    directory = root / "api-pipelines"
    directory.mkdir()
    app = create_app(env, config=ApiConfig(db_path=root / "api.db", pipelines_dir=directory))
    with TestClient(app, raise_server_exceptions=False) as client:
        headers, key_ids = {}, {}
        for role in ("reader", "writer"):
            info, token = app.state.tidelog.keys.create(role, f"{role} key", "test")
            headers[role] = {"Authorization": f"Bearer {token}"}
            key_ids[role] = info.id
        yield Served(client, headers, key_ids, app)


def test_a_retrain_requested_over_http_trains_once_and_shows_in_history(
        shop_env: tuple[Settings, Shop, Path], served: Served) -> None:
    env, shop, root = shop_env
    name = f"http-{shop.schema}"
    pipeline = _write(root / "api-pipelines", name, f"churn-{name}", shop.tables, LENIENT,
                      min_rows=NEVER)
    reader, writer = served.headers["reader"], served.headers["writer"]

    listed = served.client.get("/pipelines", headers=reader)
    assert listed.status_code == 200, listed.text
    assert [p["name"] for p in listed.json()["items"]] == [name]

    before = served.client.post(f"/pipelines/{name}/evaluate", headers=reader)
    assert before.status_code == 200, before.text
    plan = before.json()["plan"]
    rows, manual = plan["triggers"]
    assert plan["fire"] is False and manual["due"] is False and rows["due"] is False
    # counted from the archive: every row event of the shop's log (no champion yet), so
    # at least the 300 customers loaded and at most every event Debezium sent
    assert 300 <= rows["details"]["changed_rows"] <= sum(shop.events.values())
    assert "no champion yet" in rows["reason"]

    asked = served.client.post(f"/pipelines/{name}/trigger", headers=writer,
                               json={"reason": "asked over HTTP"})
    assert asked.status_code == 202, asked.text
    request_id = asked.json()["event"]["id"]

    on_broker = [e for e in read_events(env, ["retrain"]) if e.id == request_id]
    assert len(on_broker) == 1
    jsonschema.Draft202012Validator(load_schema("retrain.requested"),
                                    format_checker=jsonschema.FormatChecker()
                                    ).validate(on_broker[0].to_json())
    assert on_broker[0].data["requested_by"] == served.key_ids["writer"]

    due = served.client.post(f"/pipelines/{name}/evaluate", headers=reader).json()["plan"]
    assert due["fire"] is True and due["triggers"][1]["signals"] == [request_id]

    worker = Worker(env, pipeline, interval=1.0)
    try:
        decided, cycle = worker.step(poll=5.0)
        assert cycle is not None and cycle.trained and cycle.triggers == ("manual",)
        assert cycle.promoted and cycle.version == "1"
        # the same request is not acted on twice
        _, again = worker.step(poll=2.0)
        assert again is None
    finally:
        worker.feed.close()
    registry = Registry(env, pipeline.experiment)
    assert [r.info.run_id for r in registry.pipeline_runs(name)] == [cycle.run_id]

    history = served.client.get(f"/pipelines/{name}/history", headers=reader)
    assert history.status_code == 200, history.text
    [row] = history.json()["items"]
    assert row["run_id"] == cycle.run_id and row["status"] == "FINISHED"
    assert row["triggers"] == "manual" and row["version"] == "1"
    assert row["gate"] == "promote"
    assert row["events"]["signals"] == [request_id]
    assert row["events"]["triggered"] == event_id("pipeline.triggered", name,
                                                  cycle.cut_fingerprint)
    announced = [e.id for e in read_events(env, ["pipeline"]) if e.subject == name]
    assert announced == [row["events"]["triggered"]]

    after = served.client.post(f"/pipelines/{name}/evaluate", headers=reader).json()["plan"]
    assert after["fire"] is False and after["triggers"][1]["due"] is False
    entries, _ = served.app.state.tidelog.audit.query(action="pipelines.trigger")
    assert [(e["actor"], e["target"], e["status"]) for e in entries] == [
        (served.key_ids["writer"], name, 202)]

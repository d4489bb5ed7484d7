"""OpenLineage run events for snapshot, train and rebuild, received by a real local HTTP
endpoint through the openlineage-python client's own HTTP transport.

The archive job needs a broker: tests/integration/test_openlineage.py covers it."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from examples.churn import demo_tables
from snapshotter.snapshots import create_snapshot
from tests.unit.test_snapshot_layout import History, _settings
from tidelog.openlineage import run_id_for
from tidelog.settings import Settings
from trainer.rebuild import rebuild
from trainer.testing import FakeSnapshotProvider
from trainer.train import train

RECIPE = "examples.churn:train"


class Receiver:
    """An OpenLineage HTTP backend on loopback that keeps what it is sent."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.paths: list[str] = []
        events, paths = self.events, self.paths

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802  (http.server's name)
                length = int(self.headers.get("Content-Length", "0"))
                events.append(json.loads(self.rfile.read(length)))
                paths.append(self.path)
                self.send_response(201)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def of(self, job: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["job"]["name"] == job]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    got = Receiver()
    for name in ("OPENLINEAGE_CONFIG", "OPENLINEAGE_DISABLED", "OPENLINEAGE_NAMESPACE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENLINEAGE_URL", got.url)
    yield got
    got.close()


@pytest.fixture(autouse=True)
def _quiet(quiet_mlflow: None) -> None:
    pass


def _history_snapshot(tmp_path: Path) -> tuple[Settings, Any]:
    settings = _settings(tmp_path)
    settings = Settings(**{**settings.__dict__, "bootstrap_servers": "broker-a:9092,b:9092",
                           "postgres_dsn": "host=db.internal port=5433 dbname=shop "
                                           "user=tl password=hunter2"})
    history = History(settings, "public.items").seed(20)
    history.event("d", 3)
    return settings, create_snapshot(settings, ["public.items"], history.cut())


def test_a_snapshot_emits_its_topics_offsets_and_versioned_tables(
        tmp_path: Path, receiver: Receiver) -> None:
    settings, manifest = _history_snapshot(tmp_path)
    start, complete = receiver.of("snapshot")
    assert receiver.paths[0] == "/api/v1/lineage"
    assert (start["eventType"], complete["eventType"]) == ("START", "COMPLETE")
    assert start["run"]["runId"] == complete["run"]["runId"]
    assert complete["job"]["namespace"] == "tidelog"
    topic, source = complete["inputs"]
    assert (topic["namespace"], topic["name"]) == ("kafka://broker-a:9092", "lay.public.items")
    (part,) = topic["inputFacets"]["tidelog_offsets"]["partitions"]
    assert (part["partition"], part["start"], part["end"]) == (0, 0, 21)
    assert part["clusterId"] == "cluster-a" and part["topicId"] == "topic-a"
    assert (source["namespace"], source["name"]) == ("postgres://db.internal:5433",
                                                     "shop.public.items")
    (table,) = complete["outputs"]
    assert table["namespace"] == "file"
    assert table["name"] == str(Path(settings.snapshot_root) / "public.items")
    assert table["facets"]["version"]["datasetVersion"] == manifest.id
    digest = table["facets"]["tidelog_digest"]
    assert digest["digest"] == manifest.tables["public.items"].digest and digest["rows"] == 19
    assert digest["_schemaURL"].endswith("DigestDatasetFacet.json#/$defs/DigestDatasetFacet")
    cut = complete["run"]["facets"]["tidelog_cut"]
    assert cut["fingerprint"] == manifest.cut.fingerprint()
    assert "hunter2" not in json.dumps(receiver.events)


def test_training_and_its_rebuild_are_linked_by_the_parent_facet(
        tmp_path: Path, receiver: Receiver) -> None:
    settings = Settings(home=tmp_path, mlflow_uri=f"sqlite:///{tmp_path}/mlflow.db",
                        archive_root=str(tmp_path / "archive"),
                        snapshot_root=str(tmp_path / "snapshots"))
    fake = FakeSnapshotProvider()
    for name, frame in demo_tables(customers=80).items():
        fake.put(name, frame)
    trained = train(settings, RECIPE, params={"model": "logreg"}, seed=3, register="churn",
                    provider=fake)
    (_, complete) = receiver.of("train")
    assert complete["run"]["runId"] == run_id_for(trained.run_id)
    mlflow_facet = complete["run"]["facets"]["mlflow"]
    assert mlflow_facet["runId"] == trained.run_id
    assert mlflow_facet["registeredModelVersion"] == trained.registered_version
    assert {d["name"].rsplit("/", 1)[-1] for d in complete["inputs"]} == set(
        trained.manifest.tables)
    assert {d["facets"]["version"]["datasetVersion"] for d in complete["inputs"]} == {
        trained.manifest.id}
    (model,) = complete["outputs"]
    assert model["name"] == "models/churn"
    assert model["namespace"].startswith("mlflow+sqlite://")

    report = rebuild(settings, trained.run_id, provider=fake)
    (_, rebuilt) = receiver.of("rebuild")
    assert rebuilt["run"]["runId"] == run_id_for(report.new_run_id)
    parent = rebuilt["run"]["facets"]["parent"]
    assert parent["run"]["runId"] == complete["run"]["runId"]
    assert (parent["job"]["namespace"], parent["job"]["name"]) == ("tidelog", "train")


def test_a_failed_job_sends_fail_and_still_raises(tmp_path: Path, receiver: Receiver) -> None:
    from tidelog.errors import SnapshotError

    with pytest.raises(SnapshotError):
        create_snapshot(_settings(tmp_path), [], "latest")
    start, fail = receiver.of("snapshot")
    assert (start["eventType"], fail["eventType"]) == ("START", "FAIL")
    assert "no tables given" in fail["run"]["facets"]["errorMessage"]["message"]


def test_nothing_is_sent_unless_configured_and_a_dead_backend_fails_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, receiver: Receiver) -> None:
    monkeypatch.setenv("OPENLINEAGE_DISABLED", "true")
    _history_snapshot(tmp_path / "off")
    assert receiver.events == []
    monkeypatch.delenv("OPENLINEAGE_DISABLED")
    monkeypatch.setenv("OPENLINEAGE_URL", "http://user:secret@127.0.0.1:9/")  # nothing there
    settings, manifest = _history_snapshot(tmp_path / "dead")
    assert (Path(settings.snapshot_root) / manifest.id / "manifest.json").exists()


def test_custom_facets_match_their_published_schemas(tmp_path: Path, receiver: Receiver) -> None:
    import jsonschema

    _history_snapshot(tmp_path)
    docs = Path(__file__).resolve().parents[2] / "docs" / "openlineage"
    checked = set()
    for event in receiver.events:
        facets = [*event["run"]["facets"].values()]
        for dataset in (*event.get("inputs", ()), *event.get("outputs", ())):
            facets += [*dataset.get("facets", {}).values(),
                       *dataset.get("inputFacets", {}).values()]
        for facet in facets:
            url = facet["_schemaURL"]
            if "tidelog" not in url:
                continue
            name = url.rsplit("/", 1)[-1]
            own = json.loads((docs / f"{name}.json").read_text())["$defs"][name]["allOf"][1]
            jsonschema.validate(facet, own)
            checked.add(name)
    assert checked == {"OffsetsInputFacet", "DigestDatasetFacet", "CutRunFacet"}


def test_a_run_trained_with_exclusions_names_its_set(tmp_path: Path, receiver: Receiver
                                                     ) -> None:
    import jsonschema

    from trainer.exclusions import ExclusionStore

    settings = Settings(home=tmp_path, mlflow_uri=f"sqlite:///{tmp_path}/mlflow.db",
                        archive_root=str(tmp_path / "archive"),
                        snapshot_root=str(tmp_path / "snapshots"))
    fake = FakeSnapshotProvider()
    for name, frame in demo_tables(customers=80).items():
        fake.put(name, frame)
    ExclusionStore.for_settings(settings).add("public.customers", {"id": 4}, "bot")
    trained = train(settings, RECIPE, params={"model": "logreg"}, seed=3, provider=fake)
    (_, complete) = receiver.of("train")
    facet = complete["run"]["facets"]["tidelog_exclusions"]
    assert facet["setId"] == trained.tags["tidelog.exclusions.id"] == "xs-1"
    assert facet["digest"] == trained.tags["tidelog.exclusions.digest"]
    assert facet["rowsRemoved"] == {"public.customers": 1} and facet["count"] == 1
    docs = Path(__file__).resolve().parents[2] / "docs" / "openlineage"
    own = json.loads((docs / "ExclusionsRunFacet.json").read_text())
    jsonschema.validate(facet, own["$defs"]["ExclusionsRunFacet"]["allOf"][1])

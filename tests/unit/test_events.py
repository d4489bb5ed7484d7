"""CloudEvents encoding, deterministic ids, and the v1 JSON Schemas of every event type."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jsonschema
import pytest

from snapshotter.announce import dataset_ready
from snapshotter.cut import Cut, PartitionCut
from snapshotter.manifest import Manifest, TableManifest
from tidelog.errors import BrokerError, ConfigError
from tidelog.events import (
    EVENT_TYPES,
    CloudEvent,
    event_id,
    event_topic,
    event_topics,
    events_enabled,
    is_event_topic,
    load_schema,
    new_event,
)
from tidelog.settings import Settings, load_settings

SETTINGS = Settings(home=Path("/nonexistent"), topic_prefix="shop")


def _manifest(end: int = 10, digest: str = "d" * 64) -> Manifest:
    cut = Cut((PartitionCut("shop.public.customers", 0, end, 0, "cl", "tp"),), lsn=123,
              commit_time_ms=1700000000000, transaction_aligned=True)
    table = TableManifest(name="public.customers", topic="shop.public.customers", rows=7,
                          columns=(("id", "BIGINT"),), key_columns=("id",), digest=digest,
                          files=("a.parquet",))
    return Manifest(id=f"s{end}", cut=cut, tables={"public.customers": table}, digest=digest,
                    created_at="2026-12-01T07:00:00Z", tidelog_version="0.1.0",
                    built_from="full", source={})


def _validate(event: CloudEvent) -> None:
    jsonschema.Draft202012Validator(
        load_schema(event.kind), format_checker=jsonschema.FormatChecker(),
    ).validate(event.to_json())


def test_kafka_binary_binding_round_trips_every_attribute() -> None:
    event = dataset_ready(SETTINGS, _manifest())
    key, value, headers = event.to_kafka()
    names = dict(headers)
    assert {"ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "ce_subject",
            "content-type"} <= set(names)
    assert names["ce_specversion"] == b"1.0" and names["content-type"] == b"application/json"
    assert names["ce_type"] == b"dev.tidelog.dataset.ready.v1"
    assert key == b"s10"
    assert CloudEvent.from_kafka(headers, value) == event


def test_a_message_without_cloudevents_headers_is_refused() -> None:
    with pytest.raises(BrokerError, match="not a CloudEvents"):
        CloudEvent.from_kafka([("content-type", b"application/json")], b"{}")
    _key, value, headers = dataset_ready(SETTINGS, _manifest()).to_kafka()
    other = [(k, b"text/plain" if k == "content-type" else v) for k, v in headers]
    with pytest.raises(BrokerError, match="content-type"):
        CloudEvent.from_kafka(other, value)


def test_event_ids_derive_from_what_the_event_describes_not_when() -> None:
    first = dataset_ready(SETTINGS, _manifest())
    again = dataclasses.replace(dataset_ready(SETTINGS, _manifest()), time="2030-01-01T00:00Z")
    assert first.id == again.id
    assert dataset_ready(SETTINGS, _manifest(end=11)).id != first.id
    assert dataset_ready(SETTINGS, _manifest(digest="e" * 64)).id != first.id
    assert event_id("model.trained", "run1") != event_id("model.promoted", "run1")
    assert event_id("a", "b", "c") != event_id("a", "bc")  # parts are separated


def test_dataset_ready_carries_snapshot_cut_digests_tables_rows_and_validates() -> None:
    event = dataset_ready(SETTINGS, _manifest())
    assert event.data["snapshot_id"] == "s10"
    assert event.data["cut"]["partitions"][0]["end"] == 10
    assert event.data["tables"] == {"public.customers": {"rows": 7, "digest": "d" * 64}}
    assert event.data["rows"] == 7 and event.data["digest"] == "d" * 64
    _validate(event)


def test_the_schemas_reject_an_event_missing_its_facts() -> None:
    event = dataset_ready(SETTINGS, _manifest())
    broken = dataclasses.replace(event, data={k: v for k, v in event.data.items()
                                              if k != "cut"})
    with pytest.raises(jsonschema.ValidationError, match="cut"):
        _validate(broken)
    with pytest.raises(jsonschema.ValidationError):
        _validate(dataclasses.replace(event, id="not-a-uuid"))


def test_every_event_type_has_a_schema_for_its_own_type() -> None:
    for name, kind in EVENT_TYPES.items():
        schema = load_schema(name)
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["properties"]["type"]["const"] == kind.ce_type
        assert schema["properties"]["dataschema"]["const"] == kind.dataschema


def test_topics_live_under_the_prefix_and_are_not_cdc_topics() -> None:
    assert event_topic(SETTINGS, "dataset") == "shop.tidelog.events.dataset"
    assert set(event_topics(SETTINGS)) == {f"shop.tidelog.events.{c}" for c in
                                           ("dataset", "model", "drift", "retrain", "pipeline")}
    assert is_event_topic("shop.tidelog.events.model", "shop")
    assert not is_event_topic("shop.tidelog.customers", "shop")  # a schema called tidelog
    assert not is_event_topic("other.tidelog.events.model", "shop")


def test_events_setting_is_on_or_off_or_refused(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    assert not events_enabled(SETTINGS)
    assert events_enabled(dataclasses.replace(SETTINGS, events=True))
    for text, on in (("on", True), ("off", False), ("true", True), ("0", False)):
        monkeypatch.setenv("TIDELOG_EVENTS", text)
        assert events_enabled(load_settings(tmp_path)) is on
    monkeypatch.setenv("TIDELOG_EVENTS", "sometimes")
    with pytest.raises(ConfigError, match="TIDELOG_EVENTS .*'sometimes'"):
        load_settings(tmp_path)


def test_unknown_event_types_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown event type"):
        new_event(SETTINGS, "model.exploded", "x", {}, ("x",), "test")

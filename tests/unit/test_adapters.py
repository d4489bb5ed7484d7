"""The adapters to Kafka, Kafka Connect and Postgres, against in-memory fakes: each maps
its client's failures onto the error tree, and the connector driver runs on Connect's
REST API without a worker (`httpx.MockTransport`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from cdc import connector
from cdc.connector import ConnectorSpec
from cdc.reader import LogIdentity, log_identity
from tests.unit.fakes import FakeAdminClient
from tidelog.adapters import postgres
from tidelog.adapters.connect import KafkaConnect
from tidelog.adapters.kafka import KafkaAdmin
from tidelog.errors import (
    BrokerUnreachable,
    ConnectorFailed,
    ConnectorNotFound,
    ConnectorRejected,
    ConnectUnreachable,
    CutError,
    SourceUnreachable,
)
from tidelog.settings import Settings

# -- Kafka ------------------------------------------------------------------------------


def _admin(**kwargs: Any) -> KafkaAdmin:
    client = FakeAdminClient(topics={"p.public.a": ("tid-a", 2), "p.transaction": ("tid-t", 1)},
                             **kwargs)
    return KafkaAdmin({"bootstrap.servers": "broker.test:9092"}, client=client)


def test_kafka_admin_reads_topics_partitions_and_log_identities() -> None:
    admin = _admin(ends={("p.public.a", 1): 42})
    assert admin.topic_names() == ["p.public.a", "p.transaction"]
    assert admin.partitions(["p.public.a"]) == [("p.public.a", 0), ("p.public.a", 1)]
    assert admin.log_ids(["p.public.a"]) == ("fake-cluster", {"p.public.a": "tid-a"})
    assert admin.end_offsets([("p.public.a", 1)]) == {("p.public.a", 1): 42}
    settings = Settings(home=Path("/nonexistent"), bootstrap_servers="broker.test:9092")
    assert log_identity(settings, ["p.public.a"], admin=admin) == {
        "p.public.a": LogIdentity("fake-cluster", "tid-a")}


def test_a_missing_topic_is_a_cut_error_or_left_out() -> None:
    admin = _admin()
    with pytest.raises(CutError, match="p.public.gone"):
        admin.log_ids(["p.public.a", "p.public.gone"])
    assert admin.log_ids(["p.public.a", "p.public.gone"], missing_ok=True)[1] == {
        "p.public.a": "tid-a"}
    with pytest.raises(CutError, match="p.public.gone does not exist on broker.test:9092"):
        admin.partitions(["p.public.gone"])


def test_an_unreachable_broker_is_transient_and_names_the_servers() -> None:
    admin = _admin(down=True)
    for call in (admin.topic_names, lambda: admin.log_ids(["p.public.a"]),
                 lambda: admin.end_offsets([("p.public.a", 0)])):
        with pytest.raises(BrokerUnreachable) as caught:
            call()
        assert caught.value.transient and caught.value.status == 503
        assert "broker.test:9092" in caught.value.message
        assert "TIDELOG_BOOTSTRAP_SERVERS" in caught.value.message


# -- Kafka Connect -----------------------------------------------------------------------


class FakeConnect:
    """Kafka Connect's REST API in memory: connectors by name, with switches."""

    def __init__(self) -> None:
        self.configs: dict[str, dict[str, Any]] = {}
        self.invalid: dict[str, str] = {}  # field -> error, reported by validate
        self.task_state = "RUNNING"
        self.requests: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path, method = request.url.path, request.method
        self.requests.append(f"{method} {path}")
        parts = path.strip("/").split("/")
        if path.endswith("/config/validate"):
            configs = [{"value": {"name": k, "errors": [v]}} for k, v in self.invalid.items()]
            return httpx.Response(200, json={"error_count": len(configs), "configs": configs})
        if parts[0] != "connectors":
            return httpx.Response(404, json={"message": "no such path"})
        if len(parts) == 1:
            return httpx.Response(200, json=sorted(self.configs))
        name = parts[1]
        if method == "PUT" and parts[2:] == ["config"]:
            created = name not in self.configs
            self.configs[name] = json.loads(request.content)
            return httpx.Response(201 if created else 200, json={"name": name})
        if name not in self.configs:
            return httpx.Response(404, json={"error_code": 404,
                                             "message": f"Connector {name} not found"})
        if method == "GET" and parts[2:] == ["config"]:
            return httpx.Response(200, json=self.configs[name])
        if method == "GET" and parts[2:] == ["tasks"]:
            return httpx.Response(200, json=[{"id": {"connector": name, "task": 0},
                                              "config": self.configs[name]}])
        if method == "GET" and parts[2:] == ["offsets"]:
            return httpx.Response(200, json={"offsets": [{"offset": {"lsn": 1 << 40}}]})
        if method == "GET" and parts[2:] == ["status"]:
            task = {"id": 0, "state": self.task_state,
                    "trace": "org.x.Boom\nCaused by: wal_level is replica"}
            return httpx.Response(200, json={"name": name, "connector": {"state": "RUNNING"},
                                             "tasks": [task]})
        if method == "DELETE":
            del self.configs[name]
            return httpx.Response(204)
        if method == "POST" and parts[2:] == ["restart"]:
            return httpx.Response(202)
        return httpx.Response(405)


@pytest.fixture()
def fake_connect(monkeypatch: pytest.MonkeyPatch) -> tuple[FakeConnect, KafkaConnect, Settings]:
    fake = FakeConnect()
    settings = Settings(home=Path("/nonexistent"), connect_url="http://connect.test:8083",
                        postgres_dsn="postgresql://u:secret@127.0.0.1:5432/db")
    # Postgres is another adapter; here it always has what the connector needs.
    monkeypatch.setattr(connector, "preflight", lambda dsn, spec: None)
    monkeypatch.setattr(connector, "check_source_types", lambda dsn, tables, excluded: None)
    monkeypatch.setattr(connector, "ensure_publication", lambda dsn, spec: None)
    monkeypatch.setattr(connector, "install_ddl_refresh", lambda dsn, spec: True)
    monkeypatch.setattr(connector, "signal_snapshot", lambda dsn, spec, tables: "sig")
    monkeypatch.setattr(connector, "wait_snapshot_done", lambda *a, **k: None)
    monkeypatch.setattr(connector, "remember_connector", lambda home, config: None)
    monkeypatch.setattr(connector, "forget_connector", lambda home, name: None)
    pids = iter(range(100, 10_000))  # each look at the slot finds a new replication pid
    monkeypatch.setattr(connector, "slot_pid", lambda dsn, slot: next(pids))
    monkeypatch.setattr(connector, "slot_is_streaming", lambda dsn, slot: True)
    return fake, KafkaConnect.for_settings(settings, transport=httpx.MockTransport(fake)), \
        settings


SPEC = ConnectorSpec("c1", ("public.orders",), "p")


def test_apply_creates_then_updates_the_connector(fake_connect: Any) -> None:
    fake, connect, settings = fake_connect
    status = connector.apply(settings, SPEC, timeout=5, connect=connect)
    assert status["tasks"][0]["state"] == "RUNNING"
    assert fake.configs["c1"]["table.include.list"] == r"public\.orders"
    assert "PUT /connectors/c1/config" in fake.requests
    wider = ConnectorSpec("c1", ("public.orders", "public.items"), "p")
    connector.apply(settings, wider, timeout=5, connect=connect)
    assert fake.configs["c1"]["table.include.list"] == r"public\.orders,public\.items"
    assert connect.connectors() == ["c1"]


def test_a_rejected_config_is_a_client_error_naming_the_field(fake_connect: Any) -> None:
    fake, connect, settings = fake_connect
    fake.invalid = {"slot.name": "slot names must be lower case"}
    with pytest.raises(ConnectorRejected) as caught:
        connector.apply(settings, SPEC, timeout=5, connect=connect)
    assert caught.value.status == 400 and not caught.value.transient
    assert "slot.name: slot names must be lower case" in caught.value.message
    assert "c1" not in fake.configs  # nothing was created


def test_an_unknown_connector_is_not_found(fake_connect: Any) -> None:
    _fake, connect, settings = fake_connect
    with pytest.raises(ConnectorNotFound, match="no connector named nope") as caught:
        connector.connector_status(settings, "nope", connect=connect)
    assert caught.value.status == 404
    with pytest.raises(ConnectorNotFound):
        connector.restart(settings, ConnectorSpec("nope", (), "p"), connect=connect)


def test_a_failed_task_ends_the_wait_with_its_cause(fake_connect: Any) -> None:
    fake, connect, settings = fake_connect
    fake.task_state = "FAILED"
    with pytest.raises(ConnectorFailed, match="wal_level is replica") as caught:
        connector.apply(settings, SPEC, timeout=30, connect=connect)
    assert caught.value.details["trace"].startswith("org.x.Boom")


def test_delete_removes_it_and_tolerates_a_missing_one(fake_connect: Any) -> None:
    fake, connect, settings = fake_connect
    connector.apply(settings, SPEC, timeout=5, connect=connect)
    connector.delete(settings, SPEC, connect=connect)
    assert fake.configs == {}
    connector.delete(settings, SPEC, connect=connect)  # already gone: not an error


def test_unreachable_connect_is_transient_and_says_what_to_check() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    connect = KafkaConnect("http://connect.test:8083", transport=httpx.MockTransport(refuse))
    with pytest.raises(ConnectUnreachable) as caught:
        connect.status("c1")
    assert caught.value.transient and caught.value.status == 503
    assert "http://connect.test:8083" in caught.value.message
    assert "TIDELOG_CONNECT_URL" in caught.value.message


def test_a_connect_server_error_is_not_a_rejection() -> None:
    connect = KafkaConnect("http://connect.test:8083", transport=httpx.MockTransport(
        lambda request: httpx.Response(500, text="Request timed out")))
    with pytest.raises(ConnectorFailed) as caught:
        connect.put_config("c1", {})
    assert caught.value.status == 502


def test_wait_streaming_times_out_naming_the_last_status(fake_connect: Any,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    fake, connect, settings = fake_connect
    connector.apply(settings, SPEC, timeout=5, connect=connect)
    fake.task_state = "UNASSIGNED"
    with pytest.raises(ConnectorFailed, match="not streaming after 0s.*UNASSIGNED"):
        connector.wait_streaming(settings, SPEC, timeout=0.2, connect=connect)


# -- Postgres ----------------------------------------------------------------------------


def test_an_unreachable_postgres_is_transient_and_hides_the_password() -> None:
    with pytest.raises(SourceUnreachable) as caught:
        postgres.connect("postgresql://u:s3cret@127.0.0.1:1/db", connect_timeout=2)
    assert caught.value.transient and caught.value.status == 503
    assert "s3cret" not in caught.value.message and "127.0.0.1:1" in caught.value.message
    assert "TIDELOG_POSTGRES_DSN" in caught.value.message


@pytest.mark.parametrize(("dsn", "shown"), [
    ("postgresql://u:pw@h:5432/db", "postgresql://u:***@h:5432/db"),
    ("postgresql://u@h/db?password=pw&sslmode=require",
     "postgresql://u@h/db?password=***&sslmode=require"),
    ("host=h password=pw user=u", "host=h password=*** user=u"),
])
def test_redact_dsn(dsn: str, shown: str) -> None:
    assert postgres.redact_dsn(dsn) == shown


def test_connect_clients_share_one_ssl_context() -> None:
    """Building a client must not reload the CA bundle each time (4 per capture check)."""
    from tidelog.adapters.connect import KafkaConnect

    first, second = KafkaConnect("http://127.0.0.1:1"), KafkaConnect("https://example.invalid")
    try:
        pools = [c._client._transport._pool for c in (first, second)]  # type: ignore[attr-defined]
        assert pools[0]._ssl_context is pools[1]._ssl_context
    finally:
        first.close()
        second.close()

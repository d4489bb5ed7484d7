"""Secrets never reach a manifest, MLflow, an error or a log line (issue 12.3)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from snapshotter.manifest import Manifest
from tidelog.errors import ConnectorError, TrainingError
from tidelog.redact import install_log_redaction, redact_dsn, redact_text, redact_url

PW = "S3cr3t-PW"


@pytest.mark.parametrize(("dsn", "expected"), [
    # libpq key/value
    (f"host=db port=5432 user=me password={PW} dbname=shop",
     "host=db port=5432 user=me password=*** dbname=shop"),
    (f"host=db password = {PW} user=me", "host=db password=*** user=me"),
    (f"host=db password='{PW} with \\' quote' user=me", "host=db password=*** user=me"),
    (f"host=db sslpassword={PW} sslkey=/k.pem", "host=db sslpassword=*** sslkey=/k.pem"),
    (f"PASSWORD={PW}", "PASSWORD=***"),
    # postgresql:// URLs: userinfo, query parameters, both, unencoded separators
    (f"postgresql://me:{PW}@db:5432/shop", "postgresql://me:***@db:5432/shop"),
    (f"postgres://me@db/shop?password={PW}&sslmode=require",
     "postgres://me@db/shop?password=***&sslmode=require"),
    (f"postgresql://me:{PW}@db/shop?sslpassword={PW}&passfile=/p",
     "postgresql://me:***@db/shop?sslpassword=***&passfile=***"),
    (f"postgresql:///shop?host=/run/pg&password={PW}",
     "postgresql:///shop?host=/run/pg&password=***"),
    (f"postgresql://me:{PW}/x@db/shop", "postgresql://me:***@db/shop"),
    (f"postgresql://me:{PW}?x@db/shop", "postgresql://me:***@db/shop"),
    (f"postgresql://me:{PW}@h1:5432,h2:5433/shop", "postgresql://me:***@h1:5432,h2:5433/shop"),
    # nothing secret: unchanged, byte for byte
    ("postgresql://me@db:5432/shop?sslmode=verify-full",
     "postgresql://me@db:5432/shop?sslmode=verify-full"),
    ("host=db port=5432 user=me dbname=shop", "host=db port=5432 user=me dbname=shop"),
])
def test_redact_dsn(dsn: str, expected: str) -> None:
    assert redact_dsn(dsn) == expected
    assert PW not in redact_dsn(dsn)


@pytest.mark.parametrize(("url", "expected"), [
    (f"http://connect:{PW}@connect.internal:8083", "http://connect:***@connect.internal:8083"),
    (f"https://{PW}@mlflow.example.com/", "https://***@mlflow.example.com/"),
    (f"https://mlflow.example.com/api?token={PW}&x=1",
     "https://mlflow.example.com/api?token=***&x=1"),
    (f"https://h/?access_token={PW}&api_key={PW}&X-Amz-Signature={PW}&sig={PW}",
     "https://h/?access_token=***&api_key=***&X-Amz-Signature=***&sig=***"),
    (f"https://h/cb#id_token={PW}", "https://h/cb#id_token=***"),
    (f"s3://AKIA:{PW}@bucket/archive", "s3://AKIA:***@bucket/archive"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("tidelog://snapshot/abc/public.t?cut=0123", "tidelog://snapshot/abc/public.t?cut=0123"),
])
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_redact_text_finds_every_url_and_pair() -> None:
    text = (f"Client error '401 Unauthorized' for url 'http://u:{PW}@h:8083/connectors' "
            f"(dsn host=db password={PW}); retry https://{PW}@m/x?token={PW}")
    out = redact_text(text)
    assert PW not in out
    assert "http://u:***@h:8083/connectors" in out and "password=***" in out
    echoed = f'rejected: {{"database.password": "{PW}", "database.user": "me"}}'
    assert redact_text(echoed) == 'rejected: {"database.password": "***", "database.user": "me"}'


def test_errors_never_carry_a_secret() -> None:
    """Every TidelogError masks its message and string details where it is raised."""
    url = f"http://connect:{PW}@c:8083"
    exc = ConnectorError(f"Kafka Connect at {url} is unreachable", url=url)
    assert PW not in exc.message and PW not in str(exc)
    assert exc.details["url"] == "http://connect:***@c:8083"
    assert PW not in TrainingError(f"MLflow at https://m/?token={PW} failed").message


def test_log_records_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    install_log_redaction()
    log = logging.getLogger("tidelog.test.redact")
    with caplog.at_level(logging.INFO, logger="tidelog.test.redact"):
        log.info("calling %s", f"http://u:{PW}@h/")
        try:
            raise RuntimeError(f"failed for url 'https://m/?token={PW}'")
        except RuntimeError:
            log.exception("boom at %s", f"postgresql://me:{PW}@db/x")
    text = "\n".join(caplog.text.splitlines())
    assert "http://u:***@h/" in text and "token=***" in text
    assert PW not in text
    # arguments stay a tuple (uvicorn's access formatter unpacks them)
    assert all(isinstance(r.args, tuple) for r in caplog.records)


def _manifest_json(database: str) -> str:
    return json.dumps({
        "format_version": 2, "id": "0123456789abcdef",
        "cut": {"partitions": [{"topic": "t.public.x", "partition": 0, "start": 0,
                                "end": 1, "cluster_id": "c", "topic_id": "t"}]},
        "tables": {}, "digest": "d", "created_at": "2026-01-01T00:00:00+00:00",
        "tidelog_version": "0", "built_from": "full",
        "source": {"database": database, "connector": "c", "topic_prefix": "t"}})


@pytest.mark.parametrize("database", [
    f"host=db user=me password={PW} dbname=shop",
    f"postgresql://me@db/shop?password={PW}",
    f"postgresql://me:{PW}@db/shop",
])
def test_manifest_recorded_with_a_secret_is_redacted_on_read(database: str) -> None:
    """A manifest written before every DSN form was redacted does not pass it on."""
    manifest = Manifest.loads(_manifest_json(database))
    assert PW not in json.dumps(manifest.to_json())
    assert "***" in manifest.source["database"]


def test_snapshot_and_mlflow_record_no_password(tmp_path: Path) -> None:
    """The manifest writer and the MLflow tags get the masked DSN (real snapshotter)."""
    import dataclasses

    from snapshotter.snapshots import create_snapshot
    from tests.unit.test_snapshot_layout import History, _settings
    from trainer.recipe import RecipeVersion
    from trainer.tags import RunLineage, lineage_tags

    settings = dataclasses.replace(
        _settings(tmp_path), postgres_dsn=f"host=127.0.0.1 user=me password='{PW}' dbname=x")
    history = History(settings, "public.items")
    history.seed(5)
    manifest = create_snapshot(settings, ["public.items"], history.cut(), catch_up=False)
    written = (Path(settings.snapshot_root) / manifest.id / "manifest.json").read_text()
    assert PW not in written
    assert json.loads(written)["source"]["database"] == \
        "host=127.0.0.1 user=me password=*** dbname=x"
    tags = lineage_tags(manifest, RecipeVersion("m:f", None, None, None, None, None, None), {}, 0)
    assert tags["tidelog.source.database"] == "host=127.0.0.1 user=me password=*** dbname=x"
    # a run tagged by an older tidelog, read back: source and tags are masked
    old = {**tags, "tidelog.source.database": f"postgresql://me:{PW}@db/x"}
    lineage = RunLineage.from_tags("run1", old)
    assert PW not in json.dumps(lineage.source) and PW not in json.dumps(lineage.tags)

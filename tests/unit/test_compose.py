"""docker-compose.yml stays in step with the code it deploys.

No Docker engine runs here, so the compose file is checked as data: against the connector
template (connectors/postgres.json), the settings tidelog reads (tidelog/settings.py) and
the Dockerfile. Each test names the drift it catches.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from tidelog.docgen import SECTIONS
from tidelog.settings import Settings, section_variables

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
TEMPLATE = ROOT / "connectors" / "postgres.json"

# Services built from ./Dockerfile, and the host ports users need (and only those).
TIDELOG_SERVICES = ("tidelog-api", "connector-init")
PUBLISHED = {
    "postgres": {5432},
    "kafka": {9092},
    "connect": {8083},
    "mlflow": {5000},
    "tidelog-api": {8000},
}
# Every variable of every typed settings section (docs/configuration.md).
KNOWN_TIDELOG_VARS = {env for _t, _x, section in SECTIONS
                      for env, *_ in section_variables(section)}
PASSTHROUGH_PREFIX = "TIDELOG_KAFKA__"
JSON_CONVERTER = "org.apache.kafka.connect.json.JsonConverter"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def template() -> dict[str, str]:
    return json.loads(TEMPLATE.read_text())["config"]  # type: ignore[no-any-return]


def environment(service: dict[str, Any]) -> dict[str, Any]:
    """A service's environment as a mapping, whichever of compose's two forms it uses."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return dict(env)


def command_words(service: dict[str, Any]) -> list[str]:
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else [str(w) for w in command]


def published_ports(service: dict[str, Any]) -> set[int]:
    ports: set[int] = set()
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            if port.get("published") is not None:
                ports.add(int(str(port["published"]).split("-")[0]))
            continue
        parts = str(port).split("/")[0].split(":")
        # "CONTAINER" alone publishes on a random host port: count it as published too.
        ports.add(int(parts[-2] if len(parts) > 1 else parts[-1]))
    return ports


def worker_properties(env: dict[str, Any]) -> dict[str, str]:
    """Kafka Connect worker properties as quay.io/debezium/connect derives them from env.

    Every CONNECT_X_Y variable becomes property x.y (prefix dropped, lower case, `_` -> `.`);
    the converters come from KEY_CONVERTER / VALUE_CONVERTER, which the entrypoint defaults
    to JsonConverter and writes over any CONNECT_KEY_CONVERTER / CONNECT_VALUE_CONVERTER.
    """
    props = {
        name.removeprefix("CONNECT_").lower().replace("_", "."): value
        for name, value in env.items()
        if name.startswith("CONNECT_")
    }
    props["key.converter"] = env.get("KEY_CONVERTER", JSON_CONVERTER)
    props["value.converter"] = env.get("VALUE_CONVERTER", JSON_CONVERTER)
    return props


def strings(node: Any) -> list[str]:
    """Every key and scalar in the parsed file (comments are not configuration)."""
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in [str(k), *strings(v)]]
    if isinstance(node, list):
        return [s for item in node for s in strings(item)]
    return [] if node is None else [str(node)]


def test_every_service_has_an_image_or_a_build(services: dict[str, dict[str, Any]]) -> None:
    missing = [name for name, svc in services.items() if not (svc.get("image") or svc.get("build"))]
    assert not missing, f"services without image or build: {missing}"


def test_connect_worker_converters_match_the_connector_template(
    services: dict[str, dict[str, Any]], template: dict[str, str]
) -> None:
    props = worker_properties(environment(services["connect"]))
    converter_keys = sorted(
        k for k in template if k.startswith(("key.converter", "value.converter"))
    )
    # The template must still carry the settings this test exists to guard.
    for key in (
        "key.converter", "value.converter",
        "key.converter.schemas.enable", "value.converter.schemas.enable",
        "value.converter.replace.null.with.default",
    ):
        assert key in converter_keys, f"connectors/postgres.json no longer sets {key}"
    for key in converter_keys:
        assert props.get(key) == template[key], (
            f"Connect worker sets {key}={props.get(key)!r}, connectors/postgres.json "
            f"sets {template[key]!r}"
        )
    assert props["key.converter"] == props["value.converter"] == JSON_CONVERTER
    assert props["key.converter.schemas.enable"] == "true"
    assert props["value.converter.schemas.enable"] == "true"
    assert props["value.converter.replace.null.with.default"] == "false"


def test_topic_prefix_is_the_settings_default(services: dict[str, dict[str, Any]]) -> None:
    default = Settings.__dataclass_fields__["topic_prefix"].default
    prefixes = {
        name: environment(svc)["TIDELOG_TOPIC_PREFIX"]
        for name, svc in services.items()
        if "TIDELOG_TOPIC_PREFIX" in environment(svc)
    }
    assert set(TIDELOG_SERVICES) <= set(prefixes), f"TIDELOG_TOPIC_PREFIX set only in {prefixes}"
    assert set(prefixes.values()) == {default}, (
        f"compose topic prefixes {prefixes} differ from Settings.topic_prefix={default!r}"
    )
    for name in TIDELOG_SERVICES:
        words = command_words(services[name])
        if "--topic-prefix" in words:
            assert words[words.index("--topic-prefix") + 1] == default, name


def test_postgres_runs_with_logical_decoding(services: dict[str, dict[str, Any]]) -> None:
    settings = dict(
        w.split("=", 1) for w in command_words(services["postgres"]) if "=" in w
    )
    assert settings.get("wal_level") == "logical", settings
    for name in ("max_replication_slots", "max_wal_senders"):
        assert int(settings.get(name, "0")) >= 1, f"postgres needs {name} >= 1: {settings}"


def test_tidelog_services_share_the_image_built_from_the_dockerfile(
    services: dict[str, dict[str, Any]]
) -> None:
    images = {name: services[name].get("image") for name in TIDELOG_SERVICES}
    assert len(set(images.values())) == 1 and None not in images.values(), images
    for name in TIDELOG_SERVICES:
        build = services[name].get("build")
        assert build is not None, f"{name} has no build: `up` would try to pull {images[name]}"
        if isinstance(build, str):
            build = {"context": build}
        context = ROOT / build.get("context", ".")
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert dockerfile.resolve() == DOCKERFILE, f"{name} builds from {dockerfile}"
        assert context.resolve() == ROOT, f"{name} builds with context {context}"


def test_dockerfile_installs_the_locked_environment() -> None:
    # Join continuation lines so a RUN split over several lines reads as one.
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    runs = [line for line in text.splitlines() if line.lstrip().upper().startswith("RUN ")]
    syncs = [run for run in runs if re.search(r"\buv sync\b", run)]
    assert syncs, "the Dockerfile never runs `uv sync`"
    for run in syncs:
        assert "--frozen" in run.split(), f"`uv sync` without --frozen: {run.strip()}"
    assert re.search(r"^COPY\s+.*\buv\.lock\b", text, re.M), "uv.lock is not copied into the image"


def test_every_tidelog_variable_is_one_tidelog_reads(compose: dict[str, Any]) -> None:
    known = KNOWN_TIDELOG_VARS
    used = {m for s in strings(compose) for m in re.findall(r"\bTIDELOG_[A-Z0-9_]+", s)}
    unknown = sorted(v for v in used - known if not v.startswith(PASSTHROUGH_PREFIX))
    assert not unknown, f"compose sets TIDELOG_ variables tidelog never reads: {unknown}"
    assert used, "compose sets no TIDELOG_ variable at all"


def test_ports_are_published_only_where_users_need_them(
    services: dict[str, dict[str, Any]]
) -> None:
    published = {name: published_ports(svc) for name, svc in services.items()}
    published = {name: ports for name, ports in published.items() if ports}
    assert published == PUBLISHED


def test_healthy_conditions_point_at_services_with_healthchecks(
    services: dict[str, dict[str, Any]]
) -> None:
    for name, svc in services.items():
        depends = svc.get("depends_on") or {}
        if isinstance(depends, list):
            depends = {dep: {"condition": "service_started"} for dep in depends}
        for dep, spec in depends.items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            has_check = "healthcheck" in services[dep]
            condition = spec.get("condition")
            if has_check:
                assert condition == "service_healthy", (
                    f"{name} waits for {dep} with {condition}; {dep} has a healthcheck"
                )
            else:
                assert condition != "service_healthy", f"{dep} has no healthcheck to wait for"


def test_image_installs_the_wheel_with_the_recipes_compose_allows(compose: dict[str, Any]) -> None:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    assert re.search(r"\buv build --wheel\b", text), "the image does not build the wheel"
    assert re.search(r"\buv pip install\b[^\n]*\.whl", text), "the image does not install the wheel"
    assert re.search(r"^COPY\s+examples\b", text, re.M), "examples/ is not in the build context"
    allowed = {str(env["TIDELOG_API_RECIPES"]) for svc in compose["services"].values()
               if isinstance(env := svc.get("environment"), dict)
               and "TIDELOG_API_RECIPES" in env}
    assert allowed, "no service sets TIDELOG_API_RECIPES"
    pyproject = (ROOT / "pyproject.toml").read_text()
    for modules in allowed:
        for module in modules.split(","):
            top = module.strip().split(".")[0]
            assert f'"{top}"' in pyproject, (
                f"compose allows recipes from {module}, which the wheel does not package")

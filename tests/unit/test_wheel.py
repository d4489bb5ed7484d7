"""The wheel is the product: built from the checkout, installed into a fresh venv outside
it, it must carry everything the commands need (the connector template, the demo's recipes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UV = Path(sys.executable).parent / "uv"


def _run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None,
         timeout: int = 600) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """A venv holding only the built wheel and the locked runtime dependencies."""
    work = tmp_path_factory.mktemp("wheel")
    dist = work / "dist"
    _run(UV, "build", "--wheel", "--out-dir", dist, cwd=ROOT)
    wheels = list(dist.glob("tidelog-*.whl"))
    assert len(wheels) == 1, wheels
    requirements = work / "requirements.txt"
    exported = _run(UV, "export", "--frozen", "--no-dev", "--no-emit-project",
                    "--no-hashes", cwd=ROOT)
    requirements.write_text(exported.stdout)
    venv = work / "venv"
    _run(UV, "venv", "--python", sys.executable, venv, cwd=work)
    env = {**os.environ, "VIRTUAL_ENV": str(venv)}
    env.pop("UV_PROJECT_ENVIRONMENT", None)
    _run(UV, "pip", "install", "--quiet", "-r", requirements, cwd=work, env=env, timeout=900)
    _run(UV, "pip", "install", "--quiet", "--no-deps", wheels[0], cwd=work, env=env)
    yield venv, work


def _clean_env(venv: Path, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TIDELOG_", "PYTHON", "VIRTUAL_ENV"))}
    return {**env, "TIDELOG_HOME": str(home), "PATH": f"{venv / 'bin'}:{env['PATH']}"}


def test_installed_wheel_runs_its_commands_outside_the_checkout(
        installed: tuple[Path, Path]) -> None:
    venv, work = installed
    env = _clean_env(venv, work / "home")
    tidelog = venv / "bin" / "tidelog"
    top = _run(tidelog, "--help", cwd=work, env=env)
    assert "connector" in top.stdout and "snapshot" in top.stdout
    apply = _run(tidelog, "connector", "apply", "--help", cwd=work, env=env)
    assert "--tables" in apply.stdout
    serve = _run(tidelog, "serve", "--help", cwd=work, env=env)
    assert "--batch-size" in serve.stdout and "--max-wait-ms" in serve.stdout


def test_installed_wheel_carries_the_template_and_the_demo(
        installed: tuple[Path, Path]) -> None:
    venv, work = installed
    probe = (
        "import json, cdc.connector as c, examples.churn, examples.shop, tidelog.demo;"
        "print(json.dumps({'template': str(c.TEMPLATE), 'exists': c.TEMPLATE.is_file(),"
        " 'churn': examples.churn.__file__}))"
    )
    out = _run(venv / "bin" / "python", "-c", probe, cwd=work,
               env=_clean_env(venv, work / "home"))
    found = json.loads(out.stdout)
    assert found["exists"], found
    for path in (found["template"], found["churn"]):
        assert str(venv) in path and not path.startswith(str(ROOT)), found
    packaged = json.loads(Path(found["template"]).read_text())
    assert packaged == json.loads((ROOT / "connectors" / "postgres.json").read_text())


def test_installed_wheel_carries_the_monitoring_report(installed: tuple[Path, Path]) -> None:
    venv, work = installed
    env = _clean_env(venv, work / "home")
    probe = ("from importlib import resources; import monitoring;"
             "t = resources.files('monitoring') / 'templates';"
             "print((t / 'report.html').is_file() and (t / 'plot.html').is_file(),"
             " monitoring.__file__)")
    out = _run(venv / "bin" / "python", "-c", probe, cwd=work, env=env).stdout.split()
    assert out[0] == "True" and str(venv) in out[1], out
    usage = _run(venv / "bin" / "tidelog", "monitor", "report", "--help", cwd=work, env=env)
    assert "--window" in usage.stdout and "--against" in usage.stdout


def test_installed_wheel_carries_the_serving_schemas(installed: tuple[Path, Path]) -> None:
    venv, work = installed
    probe = ("import json, importlib.resources as r, serving.worker;"
             "base = r.files('tidelog') / 'schemas' / 'serving' / 'v1';"
             "print(json.dumps({k: json.loads((base / f'{k}.json').read_text())['$id']"
             " for k in ('request', 'result')}))")
    out = _run(venv / "bin" / "python", "-c", probe, cwd=work,
               env=_clean_env(venv, work / "home"))
    assert json.loads(out.stdout) == {"request": "urn:tidelog:schema:serving:v1:request",
                                      "result": "urn:tidelog:schema:serving:v1:result"}

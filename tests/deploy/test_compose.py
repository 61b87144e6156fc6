"""deploy/compose.yaml: valid against the Compose Specification's JSON schema, and the stack it describes.

The schema is vendored: tests/deploy/compose-spec.json is schema/compose-spec.json of
https://github.com/compose-spec/compose-spec at commit b2835e8acc1e42e7aecbc27a9bc4a1fc66ef21ba, unchanged."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import yaml
from sqlalchemy.engine import make_url

from tests.deploy import DEPLOY, GATE_PORT, SETTINGS, VERSION
from window_gate.config import load_settings

SCHEMA = json.loads((Path(__file__).parent / "compose-spec.json").read_text())
COMPOSE = DEPLOY / "compose.yaml"
# What a user puts in .env that .env.example leaves empty on purpose (compose refuses it empty).
FILLED_IN = {"POSTGRES_PASSWORD": "pg-secret", "GRAFANA_ADMIN_PASSWORD": "grafana-secret"}
VARIABLE = re.compile(r"\$\{(\w+)(?::([-?])([^}]*))?\}")


def env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line and line[0] != "#")
    return {name: value for name, value in pairs}


def interpolated(node: Any, env: dict[str, str]) -> Any:
    """Compose's `${NAME}`, `${NAME:-default}` and `${NAME:?error}` (unset or empty → default / error),
    applied as Compose does, to the string values of the parsed file."""

    def value(match: re.Match[str]) -> str:
        name, operator, argument = match.groups()
        if env.get(name):
            return env[name]
        if operator == "?":
            raise KeyError(f"{name}: {argument}")
        return argument or ""

    if isinstance(node, str):
        return VARIABLE.sub(value, node)
    if isinstance(node, dict):
        return {key: interpolated(item, env) for key, item in node.items()}
    if isinstance(node, list):
        return [interpolated(item, env) for item in node]
    return node


def load(env: dict[str, str]) -> dict[str, Any]:
    document: dict[str, Any] = interpolated(yaml.safe_load(COMPOSE.read_text()), env)
    return document


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    return load(env_file(DEPLOY / ".env.example") | FILLED_IN)


def gates(stack: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: s
        for name, s in stack["services"].items()
        if s.get("command", [])[:2] == ["window-gate", "serve"]
    }


def test_valid_against_the_compose_specification(stack: dict[str, Any]) -> None:
    jsonschema_rs.validator_for(SCHEMA).validate(stack)
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        checked = subprocess.run(
            [docker, "compose", "--env-file", ".env.example", "config", "-q"],
            cwd=DEPLOY,
            env=os.environ | FILLED_IN,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert checked.returncode == 0, checked.stderr
    # else: no Compose here (as where these files were written); the schema is the check.


def test_the_schema_refuses_what_compose_would(stack: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(stack))
    broken["services"]["gate-1"]["depends_no"] = broken["services"]["gate-1"].pop("depends_on")
    with pytest.raises(jsonschema_rs.ValidationError, match="depends_no"):
        jsonschema_rs.validator_for(SCHEMA).validate(broken)


def test_secrets_left_empty_stop_compose() -> None:
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        load(env_file(DEPLOY / ".env.example"))  # as copied, before it is filled in


def test_two_gate_replicas_serve_after_the_migration_without_migrating(stack: dict[str, Any]) -> None:
    services = stack["services"]
    assert sorted(gates(stack)) == ["gate-1", "gate-2"]
    migrate = services["migrate"]
    assert migrate["command"] == ["window-gate", "migrate"] and migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "healthcheck" in services["postgres"]
    for name in [*gates(stack), "worker"]:
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name
    for name, gate in gates(stack).items():
        assert "--no-migrate" in gate["command"], name
        assert gate["command"][gate["command"].index("--port") + 1] == str(GATE_PORT), name
        assert gate["environment"]["WINDOW_GATE_JOBS_IN_SERVE"] == "false", name  # the worker runs the jobs
    assert services["worker"]["command"] == ["window-gate", "worker"]


def test_every_image_is_pinned(stack: dict[str, Any]) -> None:
    for name, service in stack["services"].items():
        image = service["image"]
        if image.startswith("window-gate:"):
            assert image == f"window-gate:{VERSION}" and service["build"]["context"] == "..", name
        else:
            assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+(\.\d+)?(-[\w.]+)?(@sha256:[0-9a-f]{64})?", image), image


def test_the_proxy_balances_exactly_the_gate_replicas(stack: dict[str, Any]) -> None:
    proxy = stack["services"]["proxy"]
    mounted = {v.split(":")[1]: v.split(":")[0] for v in proxy["volumes"]}
    conf = (DEPLOY / mounted["/etc/nginx/conf.d/default.conf"]).read_text()
    [upstream] = re.findall(r"upstream (\w+) \{(.*?)\}", conf, re.S)
    servers = re.findall(r"^\s*server ([\w.-]+:\d+)", upstream[1], re.M)
    assert sorted(servers) == sorted(f"{name}:{GATE_PORT}" for name in gates(stack))
    assert f"proxy_pass http://{upstream[0]};" in conf
    webhooks = stack["services"]["sandbox"]["command"]
    assert webhooks[webhooks.index("--webhook-url") + 1] == "http://proxy/webhooks/whatsapp"  # via the proxy


def test_prometheus_scrapes_each_replica(stack: dict[str, Any]) -> None:
    prometheus = stack["services"]["prometheus"]
    mounted = {v.split(":")[1]: v.split(":")[0] for v in prometheus["volumes"]}
    config = yaml.safe_load((DEPLOY / mounted["/etc/prometheus/prometheus.yml"]).read_text())
    targets = [t for job in config["scrape_configs"] for c in job["static_configs"] for t in c["targets"]]
    assert sorted(targets) == sorted(f"{name}:{GATE_PORT}" for name in gates(stack))
    assert all(job.get("metrics_path", "/metrics") == "/metrics" for job in config["scrape_configs"])


def test_grafana_is_provisioned_from_the_deploy_folders(stack: dict[str, Any]) -> None:
    volumes = stack["services"]["grafana"]["volumes"]
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in volumes
    assert "./grafana/dashboards:/etc/grafana/dashboards:ro" in volumes


def test_the_gates_settings_load_and_reach_the_stacks_database_and_sandbox(
    stack: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [k for k in os.environ if k.startswith("WINDOW_GATE_")]:
        monkeypatch.delenv(name)
    environments = [
        s["environment"] for s in stack["services"].values() if s["image"].startswith("window-gate")
    ]
    assert all(env == environments[0] for env in environments)  # one x-gate block for all of them
    assert set(environments[0]) <= SETTINGS, set(environments[0]) - SETTINGS
    for name, value in environments[0].items():
        monkeypatch.setenv(name, value)
    settings = load_settings()  # an empty value that a setting refuses would stop every gate
    assert settings.database_url is not None
    url = make_url(settings.database_url)
    assert (url.host, url.port, url.password) == ("postgres", 5432, FILLED_IN["POSTGRES_PASSWORD"])
    assert url.username == stack["services"]["postgres"]["environment"]["POSTGRES_USER"]
    assert url.database == stack["services"]["postgres"]["environment"]["POSTGRES_DB"]
    assert settings.sandbox_mode and settings.graph_base_url == "http://sandbox:8001"


def test_every_variable_compose_reads_is_in_env_example() -> None:
    used = {m.group(1) for m in VARIABLE.finditer(COMPOSE.read_text())}
    assert used <= set(env_file(DEPLOY / ".env.example")), used - set(env_file(DEPLOY / ".env.example"))

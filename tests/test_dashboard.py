"""deploy/grafana: the dashboard and its provisioning, checked without a Grafana (none runs here): the JSON
has what Grafana needs, every panel reads the provisioned datasource, every query names metrics and labels
the gate registers, each topic ops asked for has its panel; and, where Prometheus is installed, every query
is parsed by promtool and run against a real Prometheus scraping a real `window-gate serve`."""

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import cli_env, free_port
from tests.factories import PN
from tests.served import CUSTOMER, deliver_inbound, run_cli, serve, window
from tests.test_metrics import registered

GRAFANA = Path(__file__).parents[1] / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "window-gate.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yaml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "window-gate.yaml"
# What the dashboard must show, each by a metric some panel queries.
TOPICS = {
    "requests": "window_gate_http_requests_total",
    "refusals by code": "window_gate_refusals_total",
    "window states": "window_gate_window_decisions_total",
    "sends by status": "window_gate_sends_total",
    "upstream latency": "window_gate_upstream_request_duration_seconds_bucket",
    "upstream errors by Meta code": "window_gate_upstream_errors_total",
    "webhook ingest lag": "window_gate_webhook_ingest_lag_seconds_bucket",
    "relay backlog": "window_gate_relay_backlog",
    "cost per day": "window_gate_spend_estimated_total",
}
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}
NAME = re.compile(r"\bwindow_gate_\w+")
# Grafana's variables, as Prometheus would get them on a short range.
VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "15s"}
PROMTOOL, PROMETHEUS = shutil.which("promtool"), shutil.which("prometheus")  # apt-get install prometheus


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def targets() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(panel, target) for panel in dashboard()["panels"] for target in panel["targets"]]


def series() -> dict[str, tuple[str, ...]]:
    """Every series name the gate exposes (a histogram's _bucket, _count, _sum…) → its labels."""
    out = {}
    for name, (kind, labels) in registered().items():
        base = name.removesuffix("_total")
        for suffix in SUFFIXES[kind]:
            out[base + suffix] = (*labels, "le") if suffix == "_bucket" else labels
    return out


def test_the_dashboard_has_what_grafana_needs() -> None:
    board = dashboard()
    assert board["uid"] and board["title"] and isinstance(board["schemaVersion"], int)
    assert board["time"] == {"from": "now-6h", "to": "now"}
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in board["panels"]:
        assert panel["type"] in {"timeseries", "barchart", "stat"} and panel["title"] and panel["targets"]
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys() and panel["gridPos"]["x"] + panel["gridPos"][
            "w"
        ] <= 24
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])


def test_every_panel_reads_the_provisioned_datasource() -> None:
    (source,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert (source["type"], source["url"]) == ("prometheus", "http://prometheus:9090")
    for panel, target in targets():
        assert panel["datasource"] == target["datasource"] == {"type": "prometheus", "uid": source["uid"]}
    (provider,) = yaml.safe_load(PROVIDERS.read_text())["providers"]
    # deploy/compose.yaml mounts the dashboards where the provider reads them, and the provisioning folder
    grafana = yaml.safe_load((DASHBOARD.parents[2] / "compose.yaml").read_text())["services"]["grafana"]
    mounts = dict(volume.removesuffix(":ro").split(":") for volume in grafana["volumes"])
    assert provider["type"] == "file" and provider["options"]["path"] == mounts["./grafana/dashboards"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"


def test_every_query_names_metrics_and_labels_the_gate_registers() -> None:
    known = series()
    for panel, target in targets():
        expr = target["expr"]
        names = NAME.findall(expr)
        assert names, (panel["title"], expr)
        unknown = set(names) - known.keys()
        assert not unknown, f"{panel['title']}: not registered: {unknown}"
        labels = {label for name in names for label in known[name]}
        grouped = {g.strip() for by in re.findall(r"\bby \(([^)]*)\)", expr) for g in by.split(",")}
        matched = set(re.findall(r"(\w+)!?=~?\"", expr))
        legend = set(re.findall(r"\{\{(\w+)\}\}", target["legendFormat"]))
        assert grouped | matched | legend <= labels, (panel["title"], (grouped | matched | legend) - labels)
        assert legend <= grouped, (panel["title"], "a legend names a label the query keeps")


def test_each_topic_has_its_panel() -> None:
    queried = {name for _, target in targets() for name in NAME.findall(target["expr"])}
    assert not {t for t, name in TOPICS.items() if name not in queried}
    (cost,) = [t["expr"] for _, t in targets() if "window_gate_spend_estimated_total" in t["expr"]]
    assert "increase(" in cost and "[1d]" in cost  # per day


def exprs() -> list[tuple[str, str]]:
    out = []
    for panel, target in targets():
        expr = target["expr"]
        for variable, value in VARIABLES.items():
            expr = expr.replace(variable, value)
        out.append((panel["title"], expr))
    return out


# CI installs Prometheus (.ci/run): there its absence fails these tests instead of skipping them.
WITHOUT_PROMETHEUS = os.environ.get("CI") != "true"


@pytest.mark.skipif(
    PROMTOOL is None and WITHOUT_PROMETHEUS, reason="promtool not installed (apt-get install prometheus)"
)
def test_promtool_parses_every_query(tmp_path: Path) -> None:
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"panel_{i}", "expr": e} for i, (_, e) in enumerate(exprs())],
            }
        ]
    }
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    done = subprocess.run(
        [str(PROMTOOL), "check", "rules", str(tmp_path / "rules.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@contextlib.contextmanager
def prometheus(target: str, tmp_path: Path) -> Iterator[httpx.Client]:
    """A real Prometheus scraping `target` every second, until stopped."""
    port = free_port()
    config = {
        "scrape_configs": [
            {"job_name": "window-gate", "scrape_interval": "1s", "static_configs": [{"targets": [target]}]}
        ]
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    with (tmp_path / "prometheus.log").open("w") as out:
        proc = subprocess.Popen(
            [
                str(PROMETHEUS),
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            yield http
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def query(http: httpx.Client, expr: str) -> list[dict[str, Any]]:
    answer = http.get("/api/v1/query", params={"query": expr}).json()
    assert answer["status"] == "success" and not answer.get("warnings"), (expr, answer)
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


@pytest.mark.slow  # `serve`, the simulator and Prometheus as processes
@pytest.mark.skipif(
    PROMETHEUS is None and WITHOUT_PROMETHEUS, reason="Prometheus not installed (apt-get install prometheus)"
)
def test_every_query_runs_on_a_real_prometheus_scraping_a_served_gate(
    emptied_afterwards: str, tmp_path: Path
) -> None:
    env = cli_env(DATABASE_URL=emptied_afterwards, SANDBOX="true", GRAPH_BASE_URL="http://127.0.0.1:9")
    key = run_cli("api-keys", "create", "dash", "--role", "admin", env=env).stdout.strip().splitlines()[-1]
    auth = {"Authorization": f"Bearer {key}"}
    with serve(env, tmp_path / "serve.log") as served:
        deliver_inbound(served.http, PN)  # a webhook, late by a second or so
        assert window(served.http, key, PN).status_code == 200
        text = {"phone_number_id": PN, "to": CUSTOMER, "type": "text", "text": {"body": "hi"}}
        assert (
            served.http.post("/v1/messages", json=text, headers=auth).status_code == 502
        )  # Meta unreachable
        closed = {**text, "to": "+1 415 555 0100"}
        assert served.http.post("/v1/messages", json=closed, headers=auth).status_code == 409  # refused
        url = served.http.base_url
        with prometheus(f"{url.host}:{url.port}", tmp_path) as http:
            deadline = time.monotonic() + 60
            while not _scraped_twice(http):
                assert time.monotonic() < deadline, (tmp_path / "prometheus.log").read_text()
                time.sleep(0.5)
            answered = {title: query(http, expr) for title, expr in exprs()}
    # What the traffic above fed must show; the rest (no paid send, no Meta error code, no held
    # message, no budget) answers empty, but answers.
    for title in (
        "Requests by route and status",
        "Refusals by problem code",
        "Request latency p99 by route",
        "Window checks by state",
        "Sends by outcome",
        "Webhook items by type and outcome",
        "Graph API latency by operation (p50, p99)",
        "Graph API errors by Meta code",  # unreachable
        "Webhook ingest lag (p50, p99)",
        "Relay backlog",
        "Database pools",
    ):
        assert answered[title], (title, answered)


def _scraped_twice(http: httpx.Client) -> bool:
    with contextlib.suppress(httpx.TransportError, KeyError, ValueError):
        result = http.get(
            "/api/v1/query", params={"query": 'count_over_time(up{job="window-gate"}[1m])'}
        ).json()
        return bool(result["data"]["result"]) and float(result["data"]["result"][0]["value"][1]) >= 3
    return False

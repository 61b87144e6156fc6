"""deploy/kubernetes/: every manifest valid against Kubernetes' own schemas (kubernetes-validate, offline,
strict: an unknown or misspelt field is an error), and the workloads as a cluster operator expects them."""

import re
import shutil
import subprocess
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy import DEPLOY, GATE_PORT, ROOT, SETTINGS, VERSION

MANIFESTS = DEPLOY / "kubernetes"
# The oldest and the newest Kubernetes whose schemas kubernetes-validate 1.37.0 ships.
KUBERNETES_VERSIONS = ("1.25.0", "1.37.0")
TMP = "/tmp"  # noqa: S108 - a mount path read from the manifests, not a file written here
DATA_DIR = re.search(r"WINDOW_GATE_DATA_DIR=(\S+)", (ROOT / "Dockerfile").read_text())[1]  # type: ignore[index]


def documents(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((MANIFESTS / name).read_text()) if doc]


RESOURCES = {
    p.name: documents(p.name) for p in sorted(MANIFESTS.glob("*.yaml")) if p.name != "kustomization.yaml"
}
APPLIED = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())["resources"]


def one(kind: str, name: str) -> dict[str, Any]:
    [found] = [
        doc
        for file in APPLIED
        for doc in RESOURCES[file]
        if (doc["kind"], doc["metadata"]["name"]) == (kind, name)
    ]
    return found


SERVE = one("Deployment", "window-gate")
WORKER = one("Deployment", "window-gate-worker")
MIGRATE = one("Job", "window-gate-migrate")
WORKLOADS = {"serve": SERVE, "worker": WORKER, "migrate": MIGRATE}


def container(workload: dict[str, Any]) -> dict[str, Any]:
    [only] = workload["spec"]["template"]["spec"]["containers"]
    return only  # type: ignore[no-any-return]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("file", sorted(RESOURCES))
def test_valid_against_kubernetes_schemas(file: str, version: str) -> None:
    for doc in RESOURCES[file]:
        kubernetes_validate.validate(doc, version, strict=True)


def test_a_misspelt_field_is_refused() -> None:
    broken = yaml.safe_load(yaml.safe_dump(SERVE))
    container(broken)["readinesProbe"] = container(broken).pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_kustomization_applies_every_manifest_but_the_example_secret() -> None:
    assert sorted(APPLIED) == sorted(set(RESOURCES) - {"secret.example.yaml"})
    if kubectl := shutil.which("kubectl"):  # kustomize, as `kubectl apply -k` runs it, offline
        built = subprocess.run(
            [kubectl, "kustomize", str(MANIFESTS)], capture_output=True, text=True, timeout=60, check=False
        )
        assert built.returncode == 0, built.stderr
        kinds = sorted(doc["kind"] for doc in yaml.safe_load_all(built.stdout))
        assert kinds == sorted(doc["kind"] for file in APPLIED for doc in RESOURCES[file])
        assert "kind: Secret" not in built.stdout


@pytest.mark.parametrize("workload", WORKLOADS)
def test_runs_unprivileged_on_a_read_only_root(workload: str) -> None:
    pod = WORKLOADS[workload]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's USER
    assert pod["automountServiceAccountToken"] is False
    security = container(WORKLOADS[workload])["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"] and "add" not in security["capabilities"]
    # Where the gate writes: /tmp (metrics of several workers) and DATA_DIR (the sandbox's state).
    empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    mounts = {m["mountPath"]: m["name"] for m in container(WORKLOADS[workload])["volumeMounts"]}
    assert {TMP, DATA_DIR} <= set(mounts) and {mounts[TMP], mounts[DATA_DIR]} <= empty_dirs


@pytest.mark.parametrize("workload", WORKLOADS)
def test_resources_are_requested_and_limited(workload: str) -> None:
    resources = container(WORKLOADS[workload])["resources"]
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[bound]), (workload, bound)


def test_the_workloads_run_their_verbs_from_the_pinned_image() -> None:
    assert container(MIGRATE)["args"] == ["window-gate", "migrate"]
    assert MIGRATE["spec"]["template"]["spec"]["restartPolicy"] in ("OnFailure", "Never")
    assert container(WORKER)["args"] == ["window-gate", "worker"]
    serve = container(SERVE)["args"]
    assert serve[:2] == ["window-gate", "serve"] and "--no-migrate" in serve  # the Job migrates
    assert serve[serve.index("--port") + 1] == str(GATE_PORT)
    for workload in WORKLOADS.values():
        assert container(workload)["image"] == f"window-gate:{VERSION}"


def test_serve_probes_liveness_readiness_and_startup() -> None:
    probes = container(SERVE)
    assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert probes["startupProbe"]["httpGet"]["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in probes["ports"]}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert ports.get(probes[probe]["httpGet"]["port"], probes[probe]["httpGet"]["port"]) == GATE_PORT


def test_the_service_hpa_and_pdb_point_at_the_serve_pods() -> None:
    labels = SERVE["spec"]["template"]["metadata"]["labels"]
    assert SERVE["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = one("Service", "window-gate")
    assert service["spec"]["selector"].items() <= labels.items()
    ports = {p["name"]: p["containerPort"] for p in container(SERVE)["ports"]}
    [port] = service["spec"]["ports"]
    assert ports.get(port["targetPort"], port["targetPort"]) == GATE_PORT
    pdb = one("PodDisruptionBudget", "window-gate")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] < SERVE["spec"]["replicas"]  # a drain can proceed
    hpa = one("HorizontalPodAutoscaler", "window-gate")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert (hpa["spec"]["scaleTargetRef"]["kind"], hpa["spec"]["scaleTargetRef"]["name"]) == (
        "Deployment",
        SERVE["metadata"]["name"],
    )
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"]
    assert "cpu" in container(SERVE)["resources"]["requests"]  # a CPU utilisation target needs a request


def test_settings_come_from_the_configmap_and_secrets_by_reference() -> None:
    [config] = RESOURCES["configmap.yaml"]
    [example] = RESOURCES["secret.example.yaml"]
    assert set(config["data"]) <= SETTINGS, set(config["data"]) - SETTINGS
    first = container(SERVE)
    for workload in WORKLOADS.values():
        assert (
            container(workload)["env"] == first["env"] and container(workload)["envFrom"] == first["envFrom"]
        )
    assert first["envFrom"] == [{"configMapRef": {"name": config["metadata"]["name"]}}]
    for variable in first["env"]:
        assert variable["name"] in SETTINGS, variable["name"]
        reference = variable["valueFrom"]["secretKeyRef"]  # never a value written here
        assert reference["name"] == example["metadata"]["name"] and reference["key"] in example["stringData"]
    assert "WINDOW_GATE_DATABASE_URL" in {v["name"] for v in first["env"]}  # never the embedded database

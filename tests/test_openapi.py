"""The OpenAPI document ops teams and client generators read: committed, complete, and self-explaining."""

from pathlib import Path
from typing import Any

import pytest
import yaml

from window_gate import openapi
from window_gate.errors import PROBLEM_JSON

COMMITTED = Path(__file__).resolve().parents[1] / "openapi.yaml"
METHODS = {"get", "post", "put", "patch", "delete"}


@pytest.fixture(scope="module")
def document() -> str:
    return openapi.document()


@pytest.fixture(scope="module")
def spec(document: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(document)
    return loaded


def test_committed_openapi_yaml_matches_the_app(document: str) -> None:
    assert COMMITTED.read_text() == document, (
        "openapi.yaml drifted: run `./dev run python -m window_gate.openapi`"
    )


def test_every_operation_has_summary_description_and_tags(spec: dict[str, Any]) -> None:
    missing = [
        f"{method.upper()} {path}: {key}"
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
        if method in METHODS
        for key in ("summary", "description", "tags")
        if not operation.get(key)
    ]
    assert not missing, missing


def test_every_schema_property_is_described_or_exemplified(spec: dict[str, Any]) -> None:
    undocumented = [
        f"{name}.{prop}"
        for name, schema in spec["components"]["schemas"].items()
        for prop, sub in schema.get("properties", {}).items()
        if not (sub.get("description") or "example" in sub or sub.get("examples"))
    ]
    assert not undocumented, undocumented


def test_error_responses_are_documented_as_problem_json(spec: dict[str, Any]) -> None:
    """Every documented 4xx/5xx body of the /v1 API is the problem+json the gate really sends."""
    wrong = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, response in operation.get("responses", {}).items():
                documented = set(response.get("content", {}))
                if path.startswith("/v1/") and str(status)[0] in "45" and documented != {PROBLEM_JSON}:
                    wrong.append(f"{method.upper()} {path} {status}: {sorted(documented)}")
    assert not wrong, wrong
    assert "HTTPValidationError" not in spec["components"]["schemas"], (
        "422 bodies are problem+json, not FastAPI's"
    )


def test_every_guarded_operation_declares_the_bearer_scheme(spec: dict[str, Any]) -> None:
    """/docs' Authorize button: the API key as an HTTP bearer scheme on every /v1 and /graph operation."""
    assert spec["components"]["securitySchemes"]["bearer"] | {"description": ""} == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "wg_ API key",
        "description": "",
    }
    missing = [
        f"{method.upper()} {path}"
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
        if method in METHODS and path.startswith(("/v1/", "/graph/"))
        if operation.get("security") != [{"bearer": []}]
    ]
    assert not missing, missing
    unguarded = [path for path in spec["paths"] if not path.startswith(("/v1/", "/graph/"))]
    assert all("security" not in op for p in unguarded for op in spec["paths"][p].values()), unguarded

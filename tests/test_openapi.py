"""The OpenAPI document ops teams and client generators read: committed, complete, and self-explaining."""

import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jsonschema_rs
import pytest
import yaml
from fastapi.routing import APIRoute, iter_route_contexts

from window_gate import openapi
from window_gate.app import create_app
from window_gate.config import load_settings
from window_gate.errors import PROBLEM_JSON, TYPE_BASE

COMMITTED = Path(__file__).resolve().parents[1] / "openapi.yaml"
METHODS = {"get", "post", "put", "patch", "delete"}
SPEC = "urn:window-gate:openapi"  # the document's URI, for resolving $refs into it


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


# Bodies that are not JSON: no JSON example could show them (and none is checked).
NOT_JSON = {
    "GET /graph/media/{media_id} 200 */*": "the media's bytes as Meta's CDN sends them (image, audio …)",
    "POST /graph/{version}/{node}/{edge} body multipart/form-data": "a media upload: the file's bytes",
}


def _media(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(where, its JSON pointer, the media object) of every request body and response content."""
    found = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for kind, media in operation.get("requestBody", {}).get("content", {}).items():
                where = f"{method.upper()} {path} body {kind}"
                pointer = f"/paths/{_escaped(path)}/{method}/requestBody/content/{_escaped(kind)}"
                found.append((where, pointer, media))
            for status, response in operation.get("responses", {}).items():
                for kind, media in response.get("content", {}).items():
                    where = f"{method.upper()} {path} {status} {kind}"
                    pointer = f"/paths/{_escaped(path)}/{method}/responses/{status}/content/{_escaped(kind)}"
                    found.append((where, pointer, media))
    return found


def _escaped(name: str) -> str:
    """A name as one step of a JSON pointer (RFC 6901)."""
    return name.replace("~", "~0").replace("/", "~1")


def _resolved(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def test_every_body_and_response_has_an_example(spec: dict[str, Any]) -> None:
    """/docs shows a realistic body for every request, success and refusal (per code: `examples`)."""
    missing = [
        where
        for where, _, media in _media(spec)
        if where not in NOT_JSON
        if not {"example", "examples"} & (set(media) | set(_resolved(spec, media.get("schema") or {})))
    ]
    assert not missing, missing
    assert set(NOT_JSON) <= {where for where, _, _ in _media(spec)}, "NOT_JSON names what is gone"


def _schema_examples(schema: Any, pointer: str) -> list[tuple[str, Any]]:
    """(pointer of a schema, one of its examples) for a schema and every schema inside it."""
    if not isinstance(schema, dict):
        return []
    found = [(pointer, schema["example"])] if "example" in schema else []
    found += [(pointer, example) for example in schema.get("examples", [])]
    for key in ("properties", "$defs", "patternProperties"):
        for name, sub in schema.get(key, {}).items():
            found += _schema_examples(sub, f"{pointer}/{key}/{_escaped(name)}")
    for key in ("items", "additionalProperties", "not"):
        found += _schema_examples(schema.get(key), f"{pointer}/{key}")
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        for i, sub in enumerate(schema.get(key, [])):
            found += _schema_examples(sub, f"{pointer}/{key}/{i}")
    return found


def test_every_example_is_valid_against_its_schema(spec: dict[str, Any]) -> None:
    """Each example, of a body, a response, a model or one of its fields, a parameter, is checked against
    the schema it illustrates ($refs resolved in the spec; formats such as date-time and uuid checked):
    an example that drifts from its model fails here."""
    examples = [
        (pointer, example)
        for name, schema in spec["components"]["schemas"].items()
        for pointer, example in _schema_examples(schema, f"/components/schemas/{name}")
    ]
    for where, pointer, media in _media(spec):
        if where not in NOT_JSON and "schema" in media:
            values = [media["example"]] if "example" in media else []
            values += [named["value"] for named in media.get("examples", {}).values()]
            examples += [(f"{pointer}/schema", value) for value in values]
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for i, parameter in enumerate(operation.get("parameters", [])):
                pointer = f"/paths/{_escaped(path)}/{method}/parameters/{i}/schema"
                examples += _schema_examples(parameter["schema"], pointer)
    registry = jsonschema_rs.Registry([(SPEC, spec)])
    invalid = [
        f"{pointer}: {error.message} at {'/'.join(map(str, error.instance_path))}"
        for pointer, example in examples
        for error in jsonschema_rs.Draft202012Validator(
            {"$ref": f"{SPEC}#{quote(pointer, safe='/~+')}"}, registry=registry, validate_formats=True
        ).iter_errors(example)
    ]
    assert not invalid, "\n".join(invalid)
    assert len(examples) > 300, len(examples)  # the walk reached them


def test_refusal_examples_are_the_codes_their_response_lists(spec: dict[str, Any]) -> None:
    """A refusal's examples are named by code, one for each code its description lists, each the problem
    the handler sends for that code: its type, code and the response's status."""
    wrong = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, response in operation.get("responses", {}).items():
                media = response.get("content", {}).get(PROBLEM_JSON, {"examples": {}})
                where = f"{method.upper()} {path} {status}"
                listed = (
                    re.findall(r"`([a-z_]+)`:", response["description"])
                    if PROBLEM_JSON in response.get("content", {})
                    else []
                )
                if sorted(media["examples"]) != sorted(set(listed)):
                    wrong.append(f"{where}: examples {sorted(media['examples'])}, listed {listed}")
                for code, named in media["examples"].items():
                    problem = named["value"]
                    if (problem["type"], problem["code"], str(problem["status"])) != (
                        TYPE_BASE + code,
                        code,
                        status,
                    ):
                        wrong.append(f"{where}: {code} renders {problem['code']} {problem['status']}")
    assert not wrong, wrong


def test_examples_keep_their_nulls() -> None:
    """FastAPI drops nulls from the document it renders: every example a route declares is in the document
    exactly as declared (`"user_id": null` in a refusal's window included)."""
    app = create_app(load_settings(sandbox=True))
    spec = app.openapi()
    declared = 0
    for route in iter_route_contexts(app.routes):
        if not isinstance(route.original_route, APIRoute) or not route.include_in_schema:
            continue
        for method in route.methods or ():
            operation = spec["paths"][route.path_format][method.lower()]
            for status, response in route.responses.items():
                for kind, media in response.get("content", {}).items():
                    for name, example in media.get("examples", {}).items():
                        rendered = operation["responses"][str(status)]["content"][kind]["examples"][name]
                        assert rendered == example, f"{method} {route.path_format} {status} {name}"
                        declared += 1
    assert declared > 200, declared

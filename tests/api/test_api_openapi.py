"""The checked-in OpenAPI document and the application agree: every route the app registers is in the
document and every documented route is registered; answers are validated against its schemas (here
for examples, and in tests/api/test_api.py for every answer of the real daemon)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from depositwatch.addressbook import ChainDirectory
from depositwatch.api import ApiContext, TokenSet, build_app
from depositwatch.api.app import openapi_document

DOC_FILE = Path(__file__).resolve().parents[2] / "src" / "depositwatch" / "api" / "openapi.json"
URN = "urn:depositwatch:openapi"


@cache
def _registry() -> Registry:
    doc = json.loads(DOC_FILE.read_text())
    return Registry().with_resource(URN, Resource.from_contents(doc, default_specification=DRAFT202012))


def _pointer(*parts: str) -> str:
    return "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def _template(path: str) -> str | None:
    """The document's path template that `path` fills in (`{name}` matches one segment)."""
    parts = path.split("/")
    for template in json.loads(DOC_FILE.read_text())["paths"]:
        wanted = template.split("/")
        if len(wanted) == len(parts) and all(
            w == p or (w[:1] == "{" and p) for w, p in zip(wanted, parts, strict=True)
        ):
            return str(template)
    return None


def validate(schema_pointer: str, value: Any) -> None:
    """Validate against a schema of the document, given by its JSON pointer."""
    validator = jsonschema.Draft202012Validator({"$ref": f"{URN}#/{schema_pointer}"}, registry=_registry())
    validator.validate(value)


def check_answer(method: str, path: str, status: int, body: Any) -> None:
    """An answer of the API against the document: a documented route answers only documented statuses
    with bodies of their schemas; anything else (unknown route, method) is an Error."""
    doc = json.loads(DOC_FILE.read_text())
    template = _template(path.split("?", maxsplit=1)[0])
    operation = doc["paths"].get(template, {}).get(method.lower()) if template else None
    if operation is None:
        assert status >= 400, (method, path, status)
        validate(_pointer("components", "schemas", "Error"), body)
        return
    responses = operation["responses"]
    if str(status) not in responses and status in (405, 413, 415):
        validate(_pointer("components", "schemas", "Error"), body)
        return
    assert str(status) in responses, f"{method} {template} answered {status}, not in the document"
    validate(
        _pointer("paths", template, method.lower(), "responses", str(status), "content", "application/json", "schema"),
        body,
    )


def test_the_document_is_what_the_api_serves() -> None:
    """The served document is the checked-in file."""
    assert openapi_document() == json.loads(DOC_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema({"$defs": openapi_document()["components"]["schemas"]})


def test_every_route_is_documented_and_every_documented_route_exists() -> None:
    """The app's routes and the document's paths and methods are the same set."""
    context = ApiContext(store=None, directory=ChainDirectory({}), tokens=TokenSet([]), health=None)  # type: ignore[arg-type]
    app = build_app(context)
    registered = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    doc = openapi_document()
    documented = {(method, path) for path, item in doc["paths"].items() for method in item}
    assert registered == documented
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            assert operation.get("operationId"), (method, path)
            if path != "/api/v1/openapi.json":
                assert {"401", "403"} <= set(operation["responses"]), (method, path)


@pytest.mark.parametrize(
    ("method", "path", "status", "body", "ok"),
    [
        ("GET", "/api/v1/addresses", 200, {"addresses": [], "next": None}, True),
        ("GET", "/api/v1/addresses", 200, {"addresses": [{"chain": "eth"}], "next": None}, False),
        ("GET", "/api/v1/addresses", 401, {"error": {"code": "unauthorized", "message": "m", "where": None}}, True),
        ("GET", "/api/v1/addresses", 401, {"error": {"code": "nope", "message": "m", "where": None}}, False),
        ("POST", "/api/v1/addresses/reinstate", 200, {"reinstated": 1, "addresses": []}, True),
        ("POST", "/api/v1/addresses/reinstate", 200, {"reinstated": -1, "addresses": []}, False),
        ("GET", "/api/v1/addresses/eth/0xabc/history", 200, {"chain": "eth", "address": "0xabc", "history": []}, True),
        ("GET", "/api/v1/alerts/abc", 404, {"error": {"code": "not_found", "message": "m", "where": "id"}}, True),
        ("GET", "/api/v1/alerts/abc", 500, {"error": {"code": "internal", "message": "m", "where": None}}, False),
    ],
)
def test_examples_are_checked_against_the_schemas(method: str, path: str, status: int, body: Any, ok: bool) -> None:
    """The checker accepts good answers and refuses ones that break the schema or the listed statuses."""
    if ok:
        check_answer(method, path, status, body)
    else:
        with pytest.raises((jsonschema.ValidationError, AssertionError)):
            check_answer(method, path, status, body)

"""The OpenAPI 3.1 description, generated from the registered routes and their `@operation` metadata.

A route joins the description by carrying `@operation(...)` under its `@bp.get/post` line:
summary, query parameters (a pydantic model), request bodies, the JSON response model and the
problem statuses it answers with. Routes without it still appear (with their docstring), and
tests/test_api_openapi.py fails until they are documented. Schemas come from pydantic
(search_api/schemas.py); apispec assembles and checks the document.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from inspect import cleandoc
from typing import Any, TypeVar

from apispec import APISpec
from flask import Flask
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from werkzeug.routing import IntegerConverter, Rule

from indexer.settings import Settings
from search_api import schemas
from search_api.access import OPEN, SESSION_COOKIE, required_scope
from search_api.http_status import status_title
from search_api.problems import PROBLEM_JSON
from search_api.query_values import bound
from storage.catalog import MAX_IMAGE_ID

F = TypeVar("F", bound=Callable[..., Any])
REF = "#/components/schemas/{model}"
BINARY = {"type": "string", "format": "binary"}
# Endpoints that are not part of the API itself: the interactive docs page and its assets.
UNDOCUMENTED_ENDPOINTS = re.compile(r"^(static|swagger_ui\..*)$")

Media = type[BaseModel] | str  # a model, "binary", "text" (any text) or "object" (any JSON object)


@dataclass(frozen=True)
class Operation:
    summary: str
    query: type[BaseModel] | None = None
    body: Mapping[str, Media] = field(default_factory=dict)
    response: Media | Mapping[str, Media] | None = None
    problems: Sequence[int] = ()
    tags: Sequence[str] = ()
    path_params: Mapping[str, str] = field(default_factory=dict)
    status: int = 200  # the success status (201 for a created resource)
    also_ok: Sequence[int] = ()  # other success statuses with the same answer (200 for one that existed)

    def models(self) -> list[type[BaseModel]]:
        media = [*self.body.values(), *(self.response.values() if isinstance(self.response, Mapping)
                                        else [self.response])]
        return [m for m in media if isinstance(m, type) and issubclass(m, BaseModel)]


def operation(
    *,
    summary: str,
    query: type[BaseModel] | None = None,
    body: Mapping[str, Media] | None = None,
    response: Media | Mapping[str, Media] | None = None,
    problems: Sequence[int] = (),
    tags: Sequence[str] = (),
    path_params: Mapping[str, str] | None = None,
    status: int = 200,
    also_ok: Sequence[int] = (),
) -> Callable[[F], F]:
    """Describe a view for the OpenAPI document; the view itself is returned unchanged.

    `response` is the JSON model of the 200 answer, or {media type: model | "binary" | "text" | "object"}.
    """
    op = Operation(summary, query, dict(body or {}), response, tuple(problems), tuple(tags), dict(path_params or {}),
                   status, tuple(also_ok))

    def attach(view: F) -> F:
        view.__openapi__ = op  # type: ignore[attr-defined]
        return view

    return attach


def _schema(media: Media) -> dict[str, Any]:
    if not isinstance(media, str):
        return {"$ref": REF.format(model=media.__name__)}
    if media == "binary":
        return dict(BINARY)
    if media == "text":
        return {"type": "string"}
    if media == "object":
        return {"type": "object"}
    raise ValueError(f"unknown media {media!r}: a model, binary, text or object")


def _query_parameters(model: type[BaseModel], settings: Settings) -> list[dict[str, Any]]:
    """The parameters as the routes validate them: the model bound to `settings`."""
    model = bound(model, settings)
    properties = model.model_json_schema(by_alias=True)["properties"]
    params = []
    for name, fld in model.model_fields.items():
        wire = fld.alias or name
        schema = {k: v for k, v in properties[wire].items() if k != "title"}
        if schema.get("default", 0) is None:
            del schema["default"]
        param: dict[str, Any] = {"name": wire, "in": "query", "required": False,
                                 "description": schema.pop("description", ""), "schema": schema}
        if schema.get("type") == "array":
            param.update(style="form", explode=True)
        params.append(param)
    return params


def _path_parameters(rule: Rule, op: Operation | None) -> list[dict[str, Any]]:
    params = []
    for name in sorted(rule.arguments):
        converter = rule._converters.get(name)  # werkzeug keeps no public accessor for a rule's converters
        schema = ({"type": "integer", "minimum": 0, "maximum": MAX_IMAGE_ID} if isinstance(converter, IntegerConverter)
                  else {"type": "string"})
        description = (op.path_params.get(name) if op else None) or name.replace("_", " ")
        params.append({"name": name, "in": "path", "required": True, "description": description, "schema": schema})
    return params


def _problem(status: int | str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {PROBLEM_JSON: {"schema": _schema(schemas.Problem)}}}


# How a request shows its key (search_api.access); the scopes each operation needs are listed as roles.
SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer KEY (an API key from "
               "`lookalike keys create NAME --scope read|write|admin`)."},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "The same key in X-API-Key."},
    "session": {"type": "apiKey", "in": "cookie", "name": SESSION_COOKIE, "description": "The web page's session "
                "(POST /api/v1/session); requests other than GET also send its X-CSRF-Token header."},
}


def _security(rule: Rule, settings: Settings) -> dict[str, Any]:
    """The scope an operation needs and the answers a missing, wrong or too weak key gets."""
    if not settings.api.keys_required():
        return {}
    scope = required_scope(rule.endpoint, settings)
    if scope == OPEN:
        return {"security": []}
    return {"security": [{name: [scope]} for name in SECURITY_SCHEMES],
            "x-required-scope": scope,
            "responses": {"401": _problem(401, "No key, or a wrong, revoked or expired one (WWW-Authenticate: "
                                          "Bearer)"),
                          "403": _problem(403, f"The key's scope is below {scope}, or a change made with the "
                                          "session cookie lacks its X-CSRF-Token"),
                          "429": _problem(429, "Too many wrong keys from this address (Retry-After)")}}


def _operation_json(view: Callable[..., Any], op: Operation | None, rule: Rule, settings: Settings) -> dict[str, Any]:
    out = _described(view, op, rule, settings)
    security = _security(rule, settings)
    out["responses"] = {**security.pop("responses", {}), **out["responses"]}
    return {**out, **security}


def _described(view: Callable[..., Any], op: Operation | None, rule: Rule, settings: Settings) -> dict[str, Any]:
    doc = cleandoc(view.__doc__ or "")
    if op is None:
        return {"summary": doc.split("\n")[0] or view.__name__, "description": doc,
                "parameters": _path_parameters(rule, None),
                "responses": {"200": {"description": "OK (not described yet)"}}}
    ok: dict[str, Any] = {"description": status_title(op.status)}
    if op.response is not None:
        response = op.response if isinstance(op.response, Mapping) else {"application/json": op.response}
        ok["content"] = {media: {"schema": _schema(model)} for media, model in response.items()}
    responses: dict[str, Any] = {str(op.status): ok}
    for status in op.also_ok:
        responses[str(status)] = {**ok, "description": status_title(status)}
    for status in op.problems:
        responses[str(status)] = _problem(status, status_title(status))
    responses["default"] = _problem("default", "Any other error, as a problem: 405, 500, 503 when the model "
                                    "cannot load (model_unavailable), does not match the catalog "
                                    "(model_mismatch) or the catalog database cannot be reached "
                                    "(catalog_unavailable), ...")
    out: dict[str, Any] = {
        "summary": op.summary,
        "description": doc,
        "operationId": view.__name__,
        "tags": list(op.tags),
        "parameters": _path_parameters(rule, op) + (_query_parameters(op.query, settings) if op.query else []),
        "responses": responses,
    }
    if op.body:
        out["requestBody"] = {"required": True,
                              "content": {media: {"schema": _schema(model)} for media, model in op.body.items()}}
    return out


def api_rules(app: Flask) -> list[Rule]:
    """The rules of the API: every registered route except the docs page and static files."""
    return [r for r in app.url_map.iter_rules() if not UNDOCUMENTED_ENDPOINTS.match(r.endpoint)]


def openapi_path(rule: Rule) -> str:
    return re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"{\1}", rule.rule)


def _version() -> str:
    try:
        return version("lookalike")
    except PackageNotFoundError:  # a source tree that is not installed
        return "0.0.0"


def build_spec(app: Flask, settings: Settings) -> dict[str, Any]:
    """The OpenAPI document of `app`; limits and defaults are filled in from `settings`."""
    spec = APISpec(
        title="lookalike",
        version=_version(),
        openapi_version="3.1.0",
        info={"description": "Self-hosted image similarity search. Errors are RFC 9457 problem details "
                             "(application/problem+json) with a stable `code`."},
    )
    models: dict[type[BaseModel], None] = {schemas.Problem: None}
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(api_rules(app), key=lambda r: r.rule):
        view = app.view_functions[rule.endpoint]
        op: Operation | None = getattr(view, "__openapi__", None)
        models.update(dict.fromkeys(op.models() if op else []))
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            paths.setdefault(openapi_path(rule), {})[method.lower()] = _operation_json(view, op, rule, settings)
    _, definitions = models_json_schema([(m, "serialization") for m in models], ref_template=REF)
    for name, schema in sorted(definitions.get("$defs", {}).items()):
        spec.components.schema(name, schema)
    for path, operations in paths.items():
        spec.path(path=path, operations=operations)
    if settings.api.keys_required():
        for name, scheme in SECURITY_SCHEMES.items():
            spec.components.security_scheme(name, scheme)
    return spec.to_dict()

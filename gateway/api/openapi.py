"""The gateway's own OpenAPI 3.1 document, served at GET /openapi.json.

Written by hand (the hot paths are raw ASGI, not FastAPI routes, so nothing could generate
them): every public path and method, the request body each takes (loosely: the gateway
passes unknown fields through to the upstream, so only what it checks itself is
described), and the error format each answers in: OpenAI's `{"error": {...}}` everywhere
except Anthropic's `{"type": "error", "error": {...}}` on /v1/messages*.
`tests/test_openapi.py` keeps it true: the paths and methods the app serves are exactly
these, and the errors each path answers have its documented shape; schemathesis generates
requests from it (`tests/test_fuzz_api.py`).
"""

from __future__ import annotations

from typing import Any

import orjson

OPENAI_ERROR = "OpenAIError"
ANTHROPIC_ERROR = "AnthropicError"

_JSON = "application/json"
_HTML = "text/html"
_OBJ: dict[str, Any] = {"type": "object"}
_STR: dict[str, Any] = {"type": "string"}

_SCHEMAS: dict[str, Any] = {
    OPENAI_ERROR: {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type"],
                "properties": {
                    "message": _STR,
                    "type": _STR,
                    "param": {"type": ["string", "null"]},
                    "code": {"type": ["string", "null"]},
                },
            }
        },
    },
    ANTHROPIC_ERROR: {
        "type": "object",
        "required": ["type", "error"],
        "properties": {
            "type": {"const": "error"},
            "error": {
                "type": "object",
                "required": ["type", "message"],
                "properties": {"type": _STR, "message": _STR},
            },
        },
    },
}

_MESSAGE = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {"role": _STR, "content": {"type": ["string", "array", "null"]}},
}
_CHAT = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        "model": _STR,
        "messages": {"type": "array", "items": _MESSAGE},
        "stream": {"type": "boolean"},
        "max_tokens": {"type": "integer"},
        "temperature": {"type": "number"},
    },
}
_COMPLETION = {
    "type": "object",
    "required": ["model", "prompt"],
    "properties": {
        "model": _STR,
        "prompt": {"type": ["string", "array"]},
        "stream": {"type": "boolean"},
        "max_tokens": {"type": "integer"},
    },
}
_EMBEDDING = {
    "type": "object",
    "required": ["model", "input"],
    "properties": {"model": _STR, "input": {"type": ["string", "array"]}},
}
_RESPONSES = {
    "type": "object",
    "required": ["model", "input"],
    "properties": {
        "model": _STR,
        "input": {"type": ["string", "array"]},
        "instructions": _STR,
        "stream": {"type": "boolean"},
        "max_output_tokens": {"type": "integer"},
        "previous_response_id": _STR,
        "store": {"type": "boolean"},
    },
}
_MESSAGES = {
    "type": "object",
    "required": ["model", "messages", "max_tokens"],
    "properties": {
        "model": _STR,
        "messages": {"type": "array", "items": _MESSAGE},
        "system": {"type": ["string", "array"]},
        "max_tokens": {"type": "integer"},
        "stream": {"type": "boolean"},
    },
}
_COUNT_TOKENS = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        "model": _STR,
        "messages": {"type": "array", "items": _MESSAGE},
        "system": {"type": ["string", "array"]},
    },
}
_FEEDBACK = {
    "type": "object",
    "required": ["request_id"],
    "properties": {
        "request_id": _STR,
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "thumbs": {"enum": ["up", "down"]},
    },
}
_NEW_KEY = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": _STR,
        "rpm": {"type": "integer"},
        "tpm": {"type": "integer"},
        "budget_usd": {"type": "number"},
        "models": {"type": "array", "items": _STR},
    },
}
_TIME_PARAMS = [
    {"name": "since", "in": "query", "required": False, "schema": _STR},
    {"name": "until", "in": "query", "required": False, "schema": _STR},
]


def _errors(schema: str, *statuses: int) -> dict[str, Any]:
    """Error answers in `schema`'s JSON format, or with HTML: the dashboard's sign-in page."""
    if schema == _HTML:
        content: dict[str, Any] = {_HTML: {"schema": _STR}}
    else:
        content = {_JSON: {"schema": {"$ref": f"#/components/schemas/{schema}"}}}
    return {str(s): {"description": "error", "content": content} for s in statuses}


def _op(
    summary: str,
    *,
    body: dict[str, Any] | None = None,
    form: dict[str, Any] | None = None,
    params: list[dict[str, Any]] | None = None,
    ok: str = _JSON,
    ok_status: int = 200,
    errors: tuple[int, ...] = (401,),
    error_schema: str = OPENAI_ERROR,
    streams: bool = False,
) -> dict[str, Any]:
    content: dict[str, Any] = {ok: {"schema": _OBJ if ok == _JSON else _STR}}
    if streams:
        content["text/event-stream"] = {"schema": _STR}
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {
            str(ok_status): {"description": "success", "content": content},
            **_errors(error_schema, *errors),
        },
    }
    if body is not None:
        op["requestBody"] = {"required": True, "content": {_JSON: {"schema": body}}}
    if form is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/x-www-form-urlencoded": {"schema": form}},
        }
    if params:
        op["parameters"] = params
    return op


def _model_call(summary: str, body: dict[str, Any], schema: str = OPENAI_ERROR) -> dict[str, Any]:
    return _op(
        summary,
        body=body,
        errors=(400, 401, 403, 404, 405, 413, 415, 429, 502, 503, 504),
        error_schema=schema,
        streams=True,
    )


def _path_param(name: str) -> list[dict[str, Any]]:
    return [{"name": name, "in": "path", "required": True, "schema": _STR}]


PATHS: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"post": _model_call("Chat completion (OpenAI)", _CHAT)},
    "/v1/completions": {"post": _model_call("Text completion (OpenAI)", _COMPLETION)},
    "/v1/embeddings": {"post": _model_call("Embeddings (OpenAI)", _EMBEDDING)},
    "/v1/responses": {"post": _model_call("Responses API (OpenAI)", _RESPONSES)},
    "/v1/responses/{resp_id}": {
        "get": _op("A kept Response", params=_path_param("resp_id"), errors=(401, 404, 503)),
        "delete": _op(
            "Delete a kept Response", params=_path_param("resp_id"), errors=(401, 404, 503)
        ),
    },
    "/v1/messages": {"post": _model_call("Messages API (Anthropic)", _MESSAGES, ANTHROPIC_ERROR)},
    "/v1/messages/count_tokens": {
        "post": _op(
            "Count a Messages request's input tokens (Anthropic)",
            body=_COUNT_TOKENS,
            errors=(400, 401, 403, 404, 405, 413, 415),
            error_schema=ANTHROPIC_ERROR,
        )
    },
    "/v1/models": {"get": _op("Every model name a client may send")},
    "/v1/models/{model_id}": {
        "get": _op("One model name", params=_path_param("model_id"), errors=(401, 404))
    },
    "/v1/usage": {
        "get": _op(
            "Requests, tokens and cost",
            params=[
                *_TIME_PARAMS,
                {"name": "group_by", "in": "query", "required": False, "schema": _STR},
            ],
            errors=(400, 401),
        )
    },
    "/v1/feedback": {
        "post": _op("A quality score for a request", body=_FEEDBACK, errors=(400, 401, 404))
    },
    "/healthz": {"get": _op("Liveness", errors=())},
    "/readyz": {"get": _op("Readiness", errors=())},
    "/metrics": {
        "get": _op(
            "Prometheus metrics (401 only when server.metrics_token is set)", ok="text/plain"
        )
    },
    "/openapi.json": {"get": _op("This document", errors=())},
    "/admin/keys": {
        "get": _op("Every gateway key (master key)", errors=(401, 403)),
        "post": _op("Make a gateway key (master key)", body=_NEW_KEY, errors=(400, 401, 403, 409)),
    },
    "/admin/keys/{key_id}": {
        "delete": _op(
            "Revoke a gateway key (master key)",
            params=_path_param("key_id"),
            errors=(401, 403, 404),
        )
    },
    "/dashboard": {"get": _op("The dashboard page", ok=_HTML, error_schema=_HTML)},
    "/dashboard/": {"get": _op("The dashboard page", ok=_HTML, error_schema=_HTML)},
    "/dashboard/data": {
        "get": _op("The dashboard's numbers", params=_TIME_PARAMS, errors=(400, 401))
    },
    "/dashboard/login": {
        "post": _op(
            "Sign in with a key (session cookie)",
            form={"type": "object", "properties": {"key": _STR}},
            ok=_HTML,
            ok_status=303,
            error_schema=_HTML,  # the sign-in page again, saying why
        )
    },
    "/dashboard/logout": {"post": _op("Sign out", ok=_HTML, ok_status=303, errors=())},
    "/dashboard/static/{name}": {
        "get": _op(
            "The dashboard's scripts and styles",
            params=_path_param("name"),
            ok="text/plain",
            errors=(404,),
        )
    },
}


def error_schema(path: str) -> str:
    """The error format a path answers in: Anthropic's on /v1/messages*, else OpenAI's."""
    return ANTHROPIC_ERROR if path.startswith("/v1/messages") else OPENAI_ERROR


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Tollgate",
            "version": "1",
            "description": "OpenAI- and Anthropic-compatible LLM routing gateway. Errors are "
            "in the format of the API a path belongs to: Anthropic's on /v1/messages*, "
            "OpenAI's everywhere else.",
        },
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            },
        },
        "security": [{"bearer": []}, {"apiKey": []}],
        "paths": PATHS,
    }


DOCUMENT = orjson.dumps(document())  # served as it is, built once

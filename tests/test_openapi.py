"""GET /openapi.json (gateway/api/openapi.py) stays true, and schemathesis fuzzes the
gateway through it.

* every path and method the app serves is in the document, and nothing else is;
* each documented operation answers its documented errors in its path's own format
  (Anthropic's on /v1/messages*, OpenAI's elsewhere): 401 without a key, 400 for a bad
  body, 405 for the wrong method on a model path;
* schemathesis generates requests from the document, valid and invalid, against a real
  gateway (fake upstream, kept Responses, auth with a master key): no 5xx, no hang (each
  call has a 30 s client timeout), every error in its path's format.

Fuzz budget: FUZZ_EXAMPLES valid and as many invalid requests per operation (24
operations), no deadline; about a minute on a loaded 2-core machine.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, cast

import httpx
import jsonschema_rs
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.generation import GenerationMode

from gateway.api import openapi
from gateway.app import build_fastapi
from gateway.proxy import COUNT_TOKENS_PATH, FACES, HOT_PATHS
from tests.fake_upstream import FakeUpstream
from tests.support import GatewayProcess

MASTER = "tg-master-openapi-5f0c2b7e9a1d3c8e"
AUTH = {"authorization": f"Bearer {MASTER}"}
JSON = {"content-type": "application/json"}
METRICS_TOKEN = "metrics-openapi-1c9d"
FUZZ_EXAMPLES = 5
METHODS = {"get", "post", "delete", "put", "patch"}


def served_routes() -> set[tuple[str, str]]:
    """(path, method) of everything the app answers: the raw ASGI model paths and the
    FastAPI side routes (path converters written as OpenAPI templates)."""
    out = {(p, "post") for p in [*HOT_PATHS, *FACES, COUNT_TOKENS_PATH]}
    app = build_fastapi(cast(Any, None))  # routes only: no gateway is started
    for r in app.routes:
        path = getattr(r, "path", "").replace(":path}", "}")
        for m in getattr(r, "methods", None) or ():
            if m.lower() in METHODS:
                out.add((path, m.lower()))
    return out


def documented_routes() -> set[tuple[str, str]]:
    return {(p, m) for p, ops in openapi.PATHS.items() for m in ops}


def test_the_document_lists_exactly_the_served_routes() -> None:
    served, documented = served_routes(), documented_routes()
    assert served - documented == set(), "served but not in gateway/api/openapi.py"
    assert documented - served == set(), "in gateway/api/openapi.py but not served"


def error_problem(path: str, method: str, r: httpx.Response) -> str | None:
    """None if `r` is an error the document gives for this operation, in the format it
    says (the path's JSON error schema, or the dashboard's HTML page), else what is wrong."""
    doc = openapi.document()
    documented = doc["paths"][path][method]["responses"].get(str(r.status_code))
    if documented is None:
        return f"{method} {path}: {r.status_code} is not documented: {r.text[:300]}"
    content = documented["content"]
    if "text/html" in content:
        ok = r.headers.get("content-type", "").startswith("text/html")
        return None if ok else f"{method} {path}: {r.status_code} is not the HTML page"
    schema = doc["components"]["schemas"][openapi.error_schema(path)]
    assert content["application/json"]["schema"]["$ref"].endswith(openapi.error_schema(path))
    try:
        jsonschema_rs.validate(schema, orjson.loads(r.content))
    except (orjson.JSONDecodeError, jsonschema_rs.ValidationError) as e:
        return f"{r.status_code} on {path} is not {openapi.error_schema(path)}: {e}: {r.text[:300]}"
    return None


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("openapi")
    fake = FakeUpstream(name="small").start()
    cfg = "\n".join(
        [
            f'store: {{backend: sqlite, sqlite_path: "{tmp}/records.db"}}',
            "responses: {store: true}",
            "auth: {required: true}",
            f"server: {{metrics_token: {METRICS_TOKEN}}}",
            "models:",
            "  - name: small",
            "    tier: small",
            "    retries: 0",
            f"    endpoints: [{{base_url: '{fake.base_url}'}}]",
            "  - name: embed",
            "    tier: small",
            "    kinds: [embeddings]",
            f"    endpoints: [{{base_url: '{fake.base_url}'}}]",
        ]
    )
    proc = GatewayProcess(cfg + "\n", tmp, env={"TOLLGATE_MASTER_KEY": MASTER})
    try:
        proc.start(timeout=180)
        yield proc
    finally:
        proc.close()
        fake.close()


def test_the_gateway_serves_the_document(gw: GatewayProcess) -> None:
    r = httpx.get(f"{gw.url}/openapi.json", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    doc = r.json()
    assert doc == openapi.document()
    assert jsonschema_rs.meta.is_valid(doc["components"]["schemas"]["OpenAIError"])
    assert set(doc["paths"]) == {p for p, _ in served_routes()}


def _concrete(path: str) -> str:
    return (
        path.replace("{resp_id}", "resp_x")
        .replace("{model_id}", "small")
        .replace("{key_id}", "k1")
        .replace("{name}", "app.js")
    )


def test_every_documented_error_has_the_documented_shape(gw: GatewayProcess) -> None:
    problems = []
    with httpx.Client(base_url=gw.url, timeout=30) as c:
        for path, ops in openapi.PATHS.items():
            for method, op in ops.items():
                url = _concrete(path)
                r = c.request(method, url, json={} if method == "post" else None)
                documented = set(op["responses"])
                if "401" in documented:  # no key: refused, in the path's format
                    if r.status_code != 401:
                        problems.append(f"{method} {path} without a key: {r.status_code}")
                    elif (p := error_problem(path, method, r)) is not None:
                        problems.append(p)
                elif r.status_code >= 400:
                    problems.append(f"{method} {path} (open) answered {r.status_code}")
                if "400" in documented and method == "post":  # a body that is not JSON
                    r = c.post(url, content=b"{not json", headers={**AUTH, **JSON})
                    if r.status_code != 400:
                        problems.append(f"POST {path} with a broken body: {r.status_code}")
                    elif (p := error_problem(path, method, r)) is not None:
                        problems.append(p)
                if "405" in documented:  # the wrong method on a model path
                    r = c.get(url, headers=AUTH)
                    if r.status_code != 405:
                        problems.append(f"GET {path}: {r.status_code}, not 405")
                    elif (p := error_problem(path, "post", r)) is not None:
                        problems.append(p)
    assert not problems, "\n".join(problems)


def _fuzz_schema() -> schemathesis.schemas.BaseSchema:
    """The served document, with the model names this gateway knows offered beside any
    string, so that generated requests also reach the upstream."""
    doc = openapi.document()
    for ops in doc["paths"].values():
        for op in ops.values():
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            props = (body or {}).get("schema", {}).get("properties", {})
            if "model" in props:
                props["model"] = {"anyOf": [{"enum": ["small", "embed"]}, {"type": "string"}]}
    return schemathesis.openapi.from_dict(doc)


def _fuzz_operation(
    op: Any, mode: GenerationMode, client: httpx.Client, base: str, failures: list[str]
) -> int:
    """FUZZ_EXAMPLES generated requests to one operation; the number sent."""
    sent = 0

    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=op.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        nonlocal sent
        kw = case.as_transport_kwargs(base_url=base)
        r = client.request(
            kw["method"],
            kw["url"],
            headers={**_generated_headers(kw), **AUTH},
            params=kw.get("params"),
            **_body(kw),
        )
        sent += 1
        if r.status_code >= 500 and r.status_code != 503:
            failures.append(f"{r.status_code} {kw['method']} {kw['url']}: {r.text[:300]}")
        elif r.status_code >= 400 and (p := error_problem(op.path, kw["method"].lower(), r)):
            failures.append(p)

    run()
    return sent


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_schemathesis_finds_no_5xx_and_no_foreign_error_format(
    gw: GatewayProcess, mode: GenerationMode
) -> None:
    failures: list[str] = []
    calls = 0
    with httpx.Client(timeout=30) as client:
        for result in _fuzz_schema().get_all_operations():
            calls += _fuzz_operation(result.ok(), mode, client, gw.url, failures)
    assert calls >= 24, calls
    assert not failures, "\n".join(dict.fromkeys(failures))


def _body(kw: dict[str, Any]) -> dict[str, Any]:
    """httpx's arguments for the generated body: form fields (the dashboard's sign-in), raw
    bytes, or JSON (by the stdlib: generated numbers may be any size, orjson stops at 64
    bits)."""
    data = kw.get("data")
    if isinstance(data, dict):
        return {"data": data}
    if data is not None:
        return {"content": data}
    return {"content": None if kw.get("json") is None else json.dumps(kw["json"]).encode()}


def _generated_headers(kw: dict[str, Any]) -> dict[str, str]:
    """The generated headers but the credentials: every request carries the master key (a
    key refused is tested above), and a generated key may not even be a valid header."""
    drop = {"authorization", "x-api-key"}
    return {k: v for k, v in (kw.get("headers") or {}).items() if k.lower() not in drop}

"""GET /v1/usage (cost, savings, latency and quality per group) and POST /v1/feedback.

Savings here are always "savings vs reference (same tokens)" (`store.base.SAVINGS_NAME`,
defined in `SAVINGS_DEFINITION`): fields reference_cost_usd, savings_vs_reference_usd and
savings_vs_reference_pct; baseline_cost_usd, savings_usd and savings_pct are the same
numbers under their earlier names, kept for existing clients.

/v1/usage's `data` and `totals` are client traffic; `judge` is the sampled judge's own spend;
`local_cost` (master key, or no keys required) is each locally priced model's busy share,
tokens served and marginal and effective price over utilisation.window_s
(gateway/accounting/utilisation.py).

Plain Starlette handlers; they find the live gateway at ``request.app.state.gw`` (attributes
``store``, ``recorder``, ``metrics``, ``config``, and ``limits`` when there is one).
"""

from __future__ import annotations

import math
import re
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.accounting.store.base import GROUP_BY, StoreError, savings_fields
from gateway.tenants.auth import caller, sees_all

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$", re.IGNORECASE)
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_REQUEST_ID = 256


class BadParam(ValueError):
    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def parse_time(value: str, param: str = "since", now: float | None = None) -> float:
    """Unix seconds from unix seconds ("1700000000"), ISO-8601 ("2024-05-01T12:00:00Z";
    no zone means UTC) or a span back from now ("15m", "24h", "7d"; units s m h d w)."""
    v = value.strip()
    now = time.time() if now is None else now
    m = _RELATIVE.match(v)
    if m:
        return now - float(m.group(1)) * _UNIT_S[m.group(2).lower()]
    try:
        f = float(v)
        if math.isfinite(f):
            return f
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(v.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise BadParam(
            param,
            f"{param}={value!r} is not a time; give unix seconds (1700000000), ISO-8601 "
            f"(2024-05-01T12:00:00Z) or a span back from now (15m, 24h, 7d)",
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _error(
    status: int,
    message: str,
    param: str | None = None,
    code: str | None = None,
    type_: str = "invalid_request_error",
) -> Response:
    return _json(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}, status
    )


def _unavailable(message: str) -> Response:
    return _error(503, message, code="store_unavailable", type_="service_unavailable")


def totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Sums over groups; quality_mean weighted by the records it covers."""
    keys = ("requests", "errors", "prompt_tokens", "cached_tokens", "completion_tokens",
            "estimated", "cost_usd", "cache_hits", "cache_saved_usd")  # fmt: skip
    out: dict[str, Any] = {k: sum(r[k] for r in rows) for k in keys}
    out.update(savings_fields(out["cost_usd"], sum(r["reference_cost_usd"] for r in rows)))
    qn = sum(r["quality_n"] for r in rows)
    out["quality_n"] = qn
    out["quality_mean"] = (
        sum(r["quality_mean"] * r["quality_n"] for r in rows if r["quality_n"]) / qn if qn else None
    )
    return out


async def usage_endpoint(request: Request) -> Response:
    """GET /v1/usage?since=24h&until=...&group_by=model|tier|key|route|endpoint

    With keys required: a team key sees its own requests only (and no judge spend), the
    master key everything."""
    gw = request.app.state.gw
    who = caller(request, "GET /v1/usage")
    if isinstance(who, Response):
        return who
    only = None if sees_all(gw.keys, who) else who.id
    q = request.query_params
    group_by = q.get("group_by", "model")
    if group_by not in GROUP_BY:
        return _error(
            400,
            f"group_by={group_by!r} is not supported; use one of: {', '.join(GROUP_BY)}",
            param="group_by",
            code="invalid_group_by",
        )
    now = time.time()
    try:
        since = parse_time(q["since"], "since", now) if q.get("since") else now - 86400.0
        until = parse_time(q["until"], "until", now) if q.get("until") else None
    except BadParam as e:
        return _error(400, str(e), param=e.param, code="invalid_time")
    if gw.store is None:
        return _unavailable(
            "usage needs a record store; this gateway runs with store.backend: none "
            "(set it to sqlite, redis or postgres in the routing file)"
        )
    try:
        rows = await gw.store.usage(since, until, group_by, key_id=only)
        judge_rows = [] if only else await gw.store.usage(since, until, "model", purpose="judge")
    except StoreError as e:
        return _unavailable(f"the {gw.store.name} store is unavailable: {e}")
    out = {
        "object": "usage",
        "since": since,
        "until": until,
        "group_by": group_by,
        "data": rows,
        "totals": totals(rows),
        "judge": judge_spend(judge_rows),
        "pending_records": gw.recorder.queue_depth,
        **({"key_id": only} if only else {}),
    }
    if only is None and getattr(gw, "utilisation", None) is not None:
        from gateway.accounting.utilisation import local_cost

        # locally priced models over utilisation.window_s: marginal and effective price
        out["local_cost"] = await local_cost(gw)
    limits = getattr(gw, "limits", None)  # absent: an app without rate limits and budgets
    if group_by == "key" and limits is not None:
        out["limits"] = await key_limits(limits, rows, only)
    return _json(out)


async def key_limits(
    limits: Any, rows: list[dict[str, Any]], only: str | None = None
) -> dict[str, Any]:
    """Each limited key's limits and its budget window's spend so far (gateway/tenants/
    limits.py), by key id (only `only`'s for a team key). A key with a budget also gets
    `budget_remaining_usd`, `budget_soft_share` (past it, its routed requests go thrifty;
    None: never) and `budget_soft` (it is past that share now; None when the spend could
    not be read); its usage row gets `budget_remaining_usd`."""
    out: dict[str, Any] = {}
    for key in limits.entries.values():
        if only and key.id != only:
            continue
        spec = limits.spec(key)
        if spec is None:
            continue
        spent = await limits.spent(spec)
        entry: dict[str, Any] = {"rpm": spec.rpm, "tpm": spec.tpm, "budget_usd": spec.budget}
        if spec.budget is not None:
            share = limits.first_soft_share(spec)
            entry["budget_window"] = spec.window
            entry["budget_spent_usd"] = spent
            entry["budget_remaining_usd"] = None if spent is None else max(0.0, spec.budget - spent)
            entry["budget_soft_share"] = share
            entry["budget_soft"] = (  # None: the spend is unknown (its backend is down)
                False if share is None else None if spent is None else spent >= share * spec.budget
            )
        out[key.id] = entry
    for row in rows:
        got = out.get(row["group"])
        if got is not None and "budget_remaining_usd" in got:
            row["budget_remaining_usd"] = got["budget_remaining_usd"]
    return out


async def _owned_by(gw: Any, rid: str, key_id: str) -> bool:
    rec = gw.recorder.buffered(rid) or await gw.store.get(rid)
    return rec is not None and rec.key_id == key_id


def _not_found(rid: str) -> Response:
    return _error(
        404, f"no request with id {rid!r} is recorded", param="request_id", code="request_not_found"
    )


def judge_spend(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The sampled judge's own calls (records with purpose "judge"), per judge model: what
    grading cost. Never part of `data` or `totals`, which are client traffic."""
    keys = ("requests", "errors", "prompt_tokens", "cached_tokens", "completion_tokens",
            "cost_usd")  # fmt: skip
    fields = (*keys, "latency_p50_ms", "latency_p95_ms")
    return {
        **{k: sum(r[k] for r in rows) for k in keys},
        "data": [{"model": r["group"], **{k: r[k] for k in fields}} for r in rows],
    }


async def feedback_endpoint(request: Request) -> Response:
    """POST /v1/feedback {"request_id": "...", "score": 0..1}
    or {"request_id": "...", "thumbs": "up" | "down"}.

    With keys required: a team key scores only its own requests (another key's answers 404,
    as an unknown id does); the master key any."""
    gw = request.app.state.gw
    who = caller(request, "POST /v1/feedback")
    if isinstance(who, Response):
        return who
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        return _error(400, "the body must be a JSON object", code="invalid_json")
    if not isinstance(body, dict):
        return _error(400, "the body must be a JSON object", code="invalid_json")
    rid = body.get("request_id")
    if not isinstance(rid, str) or not rid or len(rid) > MAX_REQUEST_ID:
        return _error(
            400,
            "request_id must be the id of a response (the `id` field or the x-request-id "
            "header), a non-empty string",
            param="request_id",
            code="invalid_request_id",
        )
    has_score, has_thumbs = "score" in body, "thumbs" in body
    if has_score == has_thumbs:
        return _error(
            400,
            'give exactly one of "score" (a number from 0 to 1) or "thumbs" ("up" or "down")',
            param="score",
            code="invalid_feedback",
        )
    if has_thumbs:
        thumbs = body["thumbs"]
        if thumbs not in ("up", "down"):
            return _error(
                400,
                f'thumbs must be "up" or "down"; got {thumbs!r}',
                param="thumbs",
                code="invalid_feedback",
            )
        score = 1.0 if thumbs == "up" else 0.0
    else:
        raw = body["score"]
        ok = isinstance(raw, int | float) and not isinstance(raw, bool)
        if not ok or not (0.0 <= float(raw) <= 1.0) or math.isnan(float(raw)):
            return _error(
                400,
                f"score must be a number from 0 to 1; got {raw!r}",
                param="score",
                code="invalid_feedback",
            )
        score = float(raw)
    if gw.store is None:
        return _unavailable(
            "feedback needs a record store; this gateway runs with store.backend: none "
            "(set it to sqlite, redis or postgres in the routing file)"
        )
    try:
        if not sees_all(gw.keys, who) and not await _owned_by(gw, rid, who.id):
            return _not_found(rid)
        got = await gw.recorder.attach_quality(rid, "feedback", score)
    except StoreError as e:
        return _unavailable(f"feedback not recorded: {e}")
    if got.status == "unknown":
        return _not_found(rid)
    if got.status == "disabled":
        return _unavailable("feedback needs a record store; store.backend is none")
    gw.metrics.quality(got.model or "unknown", "feedback", score)
    return _json(
        {"object": "feedback", "request_id": rid, "score": score, "status": got.status},
        200 if got.status == "attached" else 202,
    )

"""`tollgate report`: the /v1/usage numbers as a table, from a running gateway or the store.

`--plot FILE.png` draws the quality-cost chart of the same rows (gateway/views/plot.py, which
needs matplotlib: `pip install 'tollgate[plot]'`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from gateway.accounting.store.base import (
    GROUP_BY,
    NONE_GROUP,
    SAVINGS_DEFINITION,
    SAVINGS_NAME,
)

if TYPE_CHECKING:
    from gateway.config import GatewayKey, RoutingConfig

COLUMNS: list[tuple[str, str, str]] = [
    # (key, header, format)
    ("group", "GROUP", "s"),
    ("requests", "REQS", "d"),
    ("errors", "ERR", "d"),
    ("prompt_tokens", "IN TOK", "d"),
    ("completion_tokens", "OUT TOK", "d"),
    ("cost_usd", "COST $", "usd"),
    ("reference_cost_usd", "REFERENCE $", "usd"),
    ("savings_vs_reference_pct", "SAVED VS REF %", "pct"),
    ("latency_p50_ms", "P50 ms", "ms"),
    ("latency_p95_ms", "P95 ms", "ms"),
    ("quality_mean", "QUALITY", "q"),
]


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    if fmt == "d":
        return f"{int(value):,}"
    if fmt == "usd":
        return f"{value:.6f}" if abs(value) < 1 else f"{value:,.4f}"
    if fmt == "pct":
        return f"{value:.1f}"
    if fmt == "ms":
        return f"{value:,.0f}"
    if fmt == "q":
        return f"{value:.3f}"
    return str(value)


def format_table(rows: list[dict[str, Any]], totals: dict[str, Any] | None = None) -> str:
    """Rows aligned in columns: text left, numbers right; a TOTAL line when totals are given."""
    body = [[_cell(r.get(k), f) for k, _, f in COLUMNS] for r in rows]
    if totals is not None:
        body.append([_cell({**totals, "group": "TOTAL"}.get(k), f) for k, _, f in COLUMNS])
    header = [h for _, h, _ in COLUMNS]
    widths = [max(len(x) for x in col) for col in zip(header, *body, strict=False)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    out = [line(header)]
    out += [line(r) for r in body[: len(rows)]]
    if totals is not None:
        out.append("  ".join("-" * w for w in widths))
        out.append(line(body[-1]))
    return "\n".join(out)


def savings_note(width: int = 92) -> str:
    """What the REFERENCE $ and SAVED VS REF % columns are."""
    text = f"SAVED VS REF % is the {SAVINGS_NAME}: {SAVINGS_DEFINITION}."
    return "\n" + textwrap.fill(text, width)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tollgate report",
        description="Requests, tokens, cost, savings vs reference (same tokens), latency "
        "and quality per group, from a routing file's store or a running gateway. It says "
        "which one it read.",
    )
    p.add_argument("--since", default="24h", help="15m, 24h, 7d, unix seconds or ISO-8601")
    p.add_argument("--until", default=None, help="same forms as --since (default: now)")
    p.add_argument("--group-by", default="model", choices=list(GROUP_BY))
    p.add_argument(
        "--config",
        default=None,
        help="routing file whose store to read (default: $TOLLGATE_CONFIG, else ./tollgate.yaml, "
        "else the packaged default, whose SQLite store is $TOLLGATE_DB or var/tollgate.db under "
        "the current directory)",
    )
    p.add_argument(
        "--url", default=None, help="read GET /v1/usage of a running gateway instead of a store"
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get("TOLLGATE_API_KEY"),
        help="gateway key for --url (default: $TOLLGATE_API_KEY)",
    )
    p.add_argument("--json", action="store_true", help="print the raw rows as JSON")
    p.add_argument(
        "--plot",
        default=None,
        metavar="FILE.png",
        help="also draw quality against cost per group as a PNG (needs matplotlib: "
        "pip install 'tollgate[plot]')",
    )
    return p


def format_limits(
    limits: dict[str, dict[str, Any]], rows: list[dict[str, Any]] | None = None
) -> str:
    """The keys' limits and budget spend (`/v1/usage?group_by=key` of a gateway with limits,
    gateway/tenants/limits.py), one line per key; with the usage `rows` by key, the
    requests each key's limits refused in the report's window."""
    refused = {r["group"]: r.get("limit_rejections") or 0 for r in rows or []}

    def v(x: Any, usd: bool = False) -> str:
        return "-" if x is None else f"${x:.4f}" if usd else f"{x:,}"

    lines = ["limits per key: rpm / tpm / budget (window): spent, remaining"]
    for key, e in sorted(limits.items()):
        line = f"  {key}: {v(e.get('rpm'))} / {v(e.get('tpm'))} / {v(e.get('budget_usd'), True)}"
        if e.get("budget_usd") is not None:
            line += (
                f" ({e.get('budget_window')}): {v(e.get('budget_spent_usd'), True)} spent, "
                f"{v(e.get('budget_remaining_usd'), True)} left"
            )
            if e.get("budget_soft"):
                line += f", budget-soft (past {e['budget_soft_share']:.0%})"
        if refused.get(key):
            line += f"; {refused[key]:,} refused by its limits"
        lines.append(line)
    return "\n".join(lines)


def format_local_cost(rows: list[dict[str, Any]]) -> str:
    """Locally priced models: the marginal price routing uses next to the effective price of
    the tokens they served, idle hardware included (gateway/accounting/utilisation.py)."""
    header = ["LOCAL MODEL", "OVER s", "BUSY %", "REQS", "OUT TOK", "HARDWARE $",
              "MARGINAL $/M", "EFFECTIVE $/M"]  # fmt: skip
    body = [
        [
            str(r["model"]),
            f"{r['span_s']:,.0f}",
            "-" if r.get("busy_share") is None else f"{100 * r['busy_share']:.1f}",
            f"{int(r['requests']):,}",
            f"{int(r['completion_tokens']):,}",
            f"{r['hardware_cost_usd']:.6f}",
            f"{r['marginal_usd_per_mtok']:.4f}",
            "-"
            if r.get("effective_usd_per_mtok") is None
            else f"{r['effective_usd_per_mtok']:.4f}",
        ]
        for r in rows
    ]
    widths = [max(len(x) for x in col) for col in zip(header, *body, strict=True)]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in [header, *body]
    ]
    note = (
        "local models: MARGINAL is the routing price per million output tokens "
        "(hardware_usd_per_hour / 3600 / tokens_per_second); EFFECTIVE is the hardware's price "
        "over the period / the output tokens it served there, idle time included"
    )
    return "\n".join([*lines, textwrap.fill(note, 92)])


def _fetch_http(args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    params = {"since": args.since, "group_by": args.group_by}
    if args.until:
        params["until"] = args.until
    headers = {"authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    resp = httpx.get(args.url.rstrip("/") + "/v1/usage", params=params, headers=headers, timeout=30)
    if resp.status_code != 200:
        try:
            msg = resp.json()["error"]["message"]
        except Exception:
            msg = resp.text[:300]
        raise RuntimeError(f"{args.url} answered {resp.status_code}: {msg}")
    data: dict[str, Any] = resp.json()
    return data


async def _read_store(args: argparse.Namespace) -> dict[str, Any]:
    from gateway.accounting.store import describe_sources, make_store, missing_store
    from gateway.accounting.usage import parse_time, totals
    from gateway.accounting.utilisation import period_cost
    from gateway.config import find_config, load_config

    config = find_config(args.config)
    print(config, file=sys.stderr)
    path = str(config.path)
    cfg = load_config(path)
    store = make_store(cfg.store)
    if store is None:
        raise RuntimeError(
            f"store.backend is none in {path}: nothing is recorded; give --config the "
            "routing file of the gateway, or --url to ask a running gateway"
        )
    missing = missing_store(cfg.store, path)
    if missing:
        raise RuntimeError(
            f"{missing}; or ask a running gateway: tollgate report --url http://127.0.0.1:8000"
        )
    now = time.time()
    since = parse_time(args.since, "since", now)
    until = parse_time(args.until, "until", now) if args.until else None
    await store.open()
    try:
        rows = await store.usage(since, until, args.group_by)
        by_model = rows if args.group_by == "model" else await store.usage(since, until, "model")
    finally:
        await store.close()
    source = describe_sources(path, cfg.store)
    # the local models over the report's period: what their hardware cost per token served
    span = (until if until is not None else now) - since
    local = period_cost(cfg.models, {r["group"]: r for r in by_model}, max(0.0, span))
    out = {"since": since, "until": until, "group_by": args.group_by, "data": rows,
           "totals": totals(rows), "local_cost": local, "source": source}  # fmt: skip
    if args.group_by == "key":
        out["limits"], note = await limits_state(cfg, path, rows)
        if note:
            out["limits_note"] = note
    return out


async def limits_state(
    cfg: RoutingConfig, config_path: str, rows: list[dict[str, Any]]
) -> tuple[dict[str, Any], str | None]:
    """Each limited key's limits and budget spend, read where the gateway counts them (the
    limits' local file or Redis, gateway/tenants/limits.py; the keys from the routing file
    and the key store), as /v1/usage?group_by=key gives them; and what could not be read
    (None when everything could). Spend that cannot be read is None, never 0."""
    from gateway.accounting.usage import key_limits
    from gateway.config import mask_url_password
    from gateway.tenants.keys import KeyStoreError, make_key_store
    from gateway.tenants.limits import Backend, Limits, make_backend, redis_target

    notes: list[str] = []
    stored: list[GatewayKey] = []
    key_store = make_key_store(cfg.store)
    if key_store is not None:
        try:
            stored = await asyncio.to_thread(key_store.active)
        except KeyStoreError as e:
            notes.append(f"keys made with `tollgate keys create` are left out ({e})")
        finally:
            key_store.close()
    if not Limits.needed(cfg, stored):
        return {}, "; ".join(notes) or None
    lc = cfg.limits
    if lc.backend == "local":
        where = (
            f"limits file at {Path(lc.local_path).expanduser().absolute()} (limits.local_path "
            f"of {config_path}, relative to the current directory)"
        )
    else:
        url, cluster = redis_target(lc, cfg.store)
        kind = "Redis Cluster" if cluster else "Redis"
        where = f"limits' {kind} at {mask_url_password(url)}"
    backend: Backend | None = None
    try:
        backend = make_backend(lc, cfg.store, readonly=True)
        await asyncio.wait_for(backend.check(), 5.0)
    except FileNotFoundError:
        notes.append(
            f"budget spend unknown: there is no {where}; the gateway has counted nothing "
            "there yet, or runs from another directory (run the report from there, or "
            "ask it: --url)"
        )
    except Exception as e:
        why = str(e) or type(e).__name__
        notes.append(f"budget spend unknown: cannot read the {where}: {why}")
        if backend is not None:
            backend.close()
        backend = None
    try:
        got = await key_limits(Limits(cfg, backend, stored), rows)
    finally:
        if backend is not None:
            await _close(backend)
    if backend is not None:
        notes.insert(0, f"spend read from the {where}")
    return got, "; ".join(notes) or None


async def _close(backend: Any) -> None:
    aclose = getattr(backend, "aclose", None)
    if aclose is not None:
        await aclose()
    else:
        backend.close()


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    args = _parser().parse_args(argv)
    if args.plot:
        from gateway.views.plot import PlotUnavailable, require

        try:
            require()  # before reading anything: say at once what is missing
        except PlotUnavailable as e:
            print(f"tollgate report --plot: {e}", file=sys.stderr)
            return 1
    try:
        data = _fetch_http(args) if args.url else asyncio.run(_read_store(args))
    except Exception as e:
        print(f"tollgate report: {e}", file=sys.stderr)
        return 1
    rows, tot = data.get("data", []), data.get("totals") or {}
    source = data.pop("source", None) or f"GET {args.url.rstrip('/')}/v1/usage"
    if args.json:
        import orjson

        print(f"tollgate report: read {source}", file=sys.stderr)
        if data.get("limits_note"):
            print(f"tollgate report: limits: {data['limits_note']}", file=sys.stderr)
        out.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(data["since"]))
        print(f"usage since {since} UTC, by {args.group_by}; read {source}", file=out)
        print(format_table(rows, tot if rows else None) if rows else "(no requests)", file=out)
        if rows:
            print(savings_note(), file=out)
        if tot.get("cache_hits"):
            print(
                f"response cache: {tot['cache_hits']} answers served from it, "
                f"${tot['cache_saved_usd']:.6f} their originals cost",
                file=out,
            )
        if data.get("limits"):
            print(format_limits(data["limits"], rows), file=out)
        if data.get("limits_note"):
            print(f"limits: {data['limits_note']}", file=out)
        if data.get("local_cost"):
            print(format_local_cost(data["local_cost"]), file=out)
    if args.plot:
        plot_usage(rows, args.plot, args.group_by, since=float(data["since"]))
        print(f"plot: {args.plot}", file=out)
    return 0


def plot_usage(rows: list[dict[str, Any]], path: str, group_by: str, since: float) -> None:
    """The chart of `tollgate report --plot`: each group at (USD per 1,000 answered requests,
    mean quality) and all of them together as routed.

    Requests that failed are left out: the "(none)" group (failed before a model was chosen)
    and every group's errors, which answer nothing and cost nothing.
    """
    from gateway.views.plot import report_chart

    groups: list[tuple[str, float, float | None]] = []
    cost = answered = q_sum = q_n = 0.0
    for r in rows:
        ok = int(r.get("requests") or 0) - int(r.get("errors") or 0)
        if r["group"] == NONE_GROUP or ok <= 0:
            continue
        c = float(r.get("cost_usd") or 0.0)
        groups.append((str(r["group"]), 1000.0 * c / ok, r.get("quality_mean")))
        cost, answered = cost + c, answered + ok
        if r.get("quality_n"):
            q_sum += float(r["quality_mean"]) * int(r["quality_n"])
            q_n += int(r["quality_n"])
    mix = (
        ("all requests, as routed", 1000.0 * cost / answered, q_sum / q_n if q_n else None)
        if len(groups) > 1
        else None
    )
    day = time.strftime("%Y-%m-%d %H:%M", time.gmtime(since))
    report_chart(
        path,
        title=f"Quality vs cost by {group_by}, since {day} UTC",
        groups=groups,
        mix=mix,
        frontier=group_by in ("model", "tier"),
        group_noun=group_by,
        cost_only_title=f"Cost by {group_by}, since {day} UTC",
    )


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

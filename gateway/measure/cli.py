"""`tollgate bench-model MODEL`: measure a model server, compare settings, price it.

    tollgate bench-model gemma-local --config config/examples/local-llamacpp.yaml
    tollgate bench-model gemma-local --scored builtin --plot bench.png --write
    tollgate bench-model gemma-local --url http://127.0.0.1:8089/v1 --label parallel-1 \
        --url http://127.0.0.1:8090/v1 --label parallel-4 --scored builtin

The model's first endpoint (or each --url) is driven directly, not through a gateway, at
concurrency 1, 2, 4, ... up to the model's max_concurrency (or --max-concurrency); see
gateway/measure/load.py for what each number means. Several --url give one table that
compares them at each one's saturation point.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from gateway.config import ConfigError, ModelConfig, find_config, load_config
from gateway.measure.load import (
    SATURATION_SHARE,
    Level,
    Progress,
    Prompt,
    Target,
    levels_up_to,
    measure,
    saturation,
    usd_per_mtok,
)
from gateway.measure.scored import TasksError, accuracy, instruction_prompts, load_tasks

MAX_LEVEL = 4096


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tollgate bench-model",
        description="Drive one model server with real prompts at concurrency 1, 2, 4, ... and "
        "report per level: aggregate output tokens/s, per-stream tokens/s, time to first token "
        "and per-token latency percentiles, errors; then the saturation point and the cost per "
        "million tokens at the configured hourly price.",
    )
    p.add_argument("model", help="a model of the routing file (its first endpoint is measured)")
    p.add_argument("--config", help="routing YAML (as tollgate serve finds it)")
    p.add_argument(
        "--url",
        action="append",
        default=[],
        help="measure this OpenAI-compatible base URL (…/v1) instead; give it twice or more to "
        "compare endpoints or server settings in one table",
    )
    p.add_argument("--label", action="append", default=[], help="a name for each --url, in order")
    p.add_argument("--upstream-model", help="the model name sent (default: the endpoint's model)")
    p.add_argument("--api-key", help="bearer key for --url (default: the endpoint's api_key)")
    p.add_argument("--usd-per-hour", type=float, help="hourly price (default: the model's)")
    p.add_argument(
        "--max-concurrency", type=int, help="highest level (default: the model's max_concurrency)"
    )
    p.add_argument("--levels", help="explicit concurrency levels, comma-separated (1,2,4)")
    p.add_argument(
        "--requests-per-stream",
        type=int,
        default=3,
        help="requests each stream sends per level (default 3: level c sends 3c)",
    )
    p.add_argument("--max-tokens", type=int, default=64, help="max_tokens per request (64)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--prompts", type=int, default=64, help="AlpacaEval instructions used (64)")
    p.add_argument(
        "--scored",
        metavar="FILE",
        help="prompts with reference answers, graded by exact match; `builtin` is the shipped "
        "set of arithmetic, counting and string tasks",
    )
    p.add_argument("--warmup", type=int, default=1, help="unmeasured requests first (1)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per request (300)")
    p.add_argument("--plot", metavar="FILE.png", help="chart throughput and latency by level")
    p.add_argument("--json", metavar="FILE", help="write every number measured as JSON")
    p.add_argument(
        "--write",
        action="store_true",
        help="set the model's pricing.tokens_per_second in the routing file to the throughput "
        "at the saturation point (only that value changes; a comment gives date and command)",
    )
    return p


def _fail(msg: str) -> int:
    print(f"tollgate bench-model: {msg}", file=sys.stderr)
    return 2


def _levels(args: argparse.Namespace, model: ModelConfig | None) -> list[int]:
    if args.levels:
        try:
            levels = sorted({int(x) for x in args.levels.split(",") if x.strip()})
        except ValueError:
            raise ValueError(
                f"--levels {args.levels!r}: give whole numbers such as 1,2,4"
            ) from None
    else:
        top = args.max_concurrency or (model.max_concurrency if model is not None else 8)
        levels = levels_up_to(top)
    if not levels or levels[0] < 1 or levels[-1] > MAX_LEVEL:
        raise ValueError(f"concurrency levels must be 1 to {MAX_LEVEL}, got {levels}")
    return levels


def _targets(args: argparse.Namespace, model: ModelConfig | None) -> list[Target]:
    price = args.usd_per_hour
    ratio = 0.1
    if model is not None and model.pricing is not None:
        ratio = model.pricing.input_ratio
        if price is None:
            price = model.pricing.hardware_usd_per_hour
    if args.url:
        if args.label and len(args.label) != len(args.url):
            raise ValueError(f"give one --label per --url ({len(args.url)}), or none")
        labels = args.label or (
            [args.model] if len(args.url) == 1 else [f"{args.model}@{u}" for u in args.url]
        )
        ep = model.endpoints[0] if model is not None else None
        name = args.upstream_model or (ep.model if ep and ep.model else args.model)
        key = args.api_key if args.api_key is not None else (ep.api_key if ep else None)
        return [
            Target(lab, u.rstrip("/"), name, key, price, ratio)
            for lab, u in zip(labels, args.url, strict=True)
        ]
    if model is None:
        raise ValueError(f"no model {args.model!r} in the routing file; name one, or give --url")
    ep = model.endpoints[0]
    key = args.api_key if args.api_key is not None else ep.api_key
    name = args.upstream_model or ep.model or model.name
    label = args.label[0] if args.label else model.name
    return [Target(label, ep.base_url.rstrip("/"), name, key, price, ratio)]


def _f(v: float | None, fmt: str = ",.1f") -> str:
    return "-" if v is None else format(v, fmt)


def level_rows(levels: list[Level]) -> list[list[str]]:
    rows = []
    for lv in levels:
        s = lv.summary()
        acc = accuracy(lv.answers)
        server = lv.server_predicted
        rows.append(
            [
                str(lv.concurrency),
                str(len(lv.answers)),
                str(lv.errors),
                f"{lv.completion_tokens:,}",
                f"{lv.wall_s:.2f}",
                _f(lv.aggregate_tps),
                _f(s["stream_tps_p50"]),
                "/".join(_f(s["ttft_ms"][f"p{q}"], ".0f") for q in (50, 90, 99)),
                "/".join(_f(s["per_token_ms"][f"p{q}"], ".1f") for q in (50, 90, 99)),
                "-" if server is None else _f(server / lv.wall_s),
                "-" if acc is None else f"{acc[0]}/{acc[1]}",
            ]
        )
    return rows


LEVEL_HEADER = ["CONC", "REQS", "ERR", "OUT TOK", "WALL s", "AGG TOK/s", "STREAM TOK/s",
                "TTFT ms p50/90/99", "PER-TOKEN ms p50/90/99", "SERVER TOK/s", "EXACT"]  # fmt: skip
COMPARE_HEADER = ["TARGET", "SATURATION", "AGG TOK/s", "STREAM TOK/s", "TTFT p50 ms",
                  "PER-TOKEN p50 ms", "ERR", "$/M IN", "$/M OUT", "EXACT"]  # fmt: skip


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 and not c[:1].isdigit() else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)])


def target_summary(t: Target, levels: list[Level]) -> dict[str, Any]:
    sat = saturation(levels)
    answers = [a for lv in levels for a in lv.answers]
    acc = accuracy(answers)
    out: dict[str, Any] = {
        "label": t.label,
        "base_url": t.base_url,
        "model": t.model,
        "usd_per_hour": t.usd_per_hour,
        "levels": [lv.summary() for lv in levels],
        "saturation": None,
        "exact_match": None if acc is None else {"right": acc[0], "graded": acc[1]},
    }
    if sat is not None:
        s = sat.summary()
        prices = usd_per_mtok(t, sat.aggregate_tps)
        out["saturation"] = {
            "concurrency": sat.concurrency,
            "tokens_per_second": sat.aggregate_tps,
            "stream_tps_p50": s["stream_tps_p50"],
            "ttft_p50_ms": s["ttft_ms"]["p50"],
            "per_token_p50_ms": s["per_token_ms"]["p50"],
            "usd_per_mtok_input": None if prices is None else prices[0],
            "usd_per_mtok_output": None if prices is None else prices[1],
        }
    return out


def compare_row(summary: dict[str, Any]) -> list[str]:
    sat = summary["saturation"] or {}
    acc = summary["exact_match"]
    errors = sum(lv["errors"] for lv in summary["levels"])
    return [
        summary["label"],
        "-" if not sat else f"c={sat['concurrency']}",
        _f(sat.get("tokens_per_second")),
        _f(sat.get("stream_tps_p50")),
        _f(sat.get("ttft_p50_ms"), ".0f"),
        _f(sat.get("per_token_p50_ms"), ".1f"),
        str(errors),
        _f(sat.get("usd_per_mtok_input"), ".4f"),
        _f(sat.get("usd_per_mtok_output"), ".4f"),
        "-" if acc is None else f"{acc['right']}/{acc['graded']}",
    ]


def describe_saturation(summary: dict[str, Any]) -> str:
    sat = summary["saturation"]
    if sat is None:
        return f"{summary['label']}: no level served a token; no saturation point"
    text = (
        f"{summary['label']}: saturation at concurrency {sat['concurrency']} (the lowest level "
        f"within {1 - SATURATION_SHARE:.0%} of the best throughput): "
        f"{sat['tokens_per_second']:,.1f} output tokens/s"
    )
    if sat["usd_per_mtok_output"] is not None:
        text += (
            f"; at ${summary['usd_per_hour']:g}/hour that is ${sat['usd_per_mtok_output']:.4f} "
            f"per million output tokens, ${sat['usd_per_mtok_input']:.4f} per million input"
        )
    else:
        text += "; no hourly price (pricing.hardware_usd_per_hour or --usd-per-hour), no cost"
    return text


def _chart(path: str, model: str, results: list[tuple[Target, list[Level]]]) -> None:
    from gateway.views import plot

    series = [
        plot.BenchSeries(
            t.label,
            [
                (
                    lv.concurrency,
                    lv.aggregate_tps,
                    s["stream_tps_p50"],
                    s["ttft_ms"]["p50"],
                    s["per_token_ms"]["p50"],
                )
                for lv in levels
                for s in [lv.summary()]
            ],
        )
        for t, levels in results
    ]
    plot.bench_chart(path, title=f"{model}: throughput and latency by concurrency", series=series)


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    argv = list(sys.argv[2:] if argv is None else argv)
    args = _parser().parse_args(argv)
    for name in ("requests_per_stream", "max_tokens", "prompts"):
        if getattr(args, name) < 1:
            return _fail(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0 or args.timeout <= 0:
        return _fail("--warmup must be 0 or more and --timeout above 0")
    source = find_config(args.config)
    try:
        cfg = load_config(source.path)
    except ConfigError as e:
        if not args.url:
            return _fail(str(e))
        cfg = None
    model = next((m for m in cfg.models if m.name == args.model), None) if cfg else None
    if args.write and (model is None or len(args.url) > 1):
        return _fail(
            "--write sets a configured model's tokens_per_second: name a model of the routing "
            "file and measure one endpoint"
        )
    if args.plot:
        from gateway.views.plot import PlotUnavailable, require

        try:
            require()
        except PlotUnavailable as e:
            return _fail(str(e))
    try:
        levels = _levels(args, model)
        targets = _targets(args, model)
        prompts: list[Prompt] = (
            load_tasks(args.scored) if args.scored else instruction_prompts(args.prompts)
        )
    except (ValueError, TasksError) as e:
        return _fail(str(e))
    total = sum(c * args.requests_per_stream for c in levels) * len(targets)
    progress = Progress(total)
    results: list[tuple[Target, list[Level]]] = []
    try:
        for t in targets:
            progress.line(f"measuring {t.label}: {t.base_url} (model {t.model!r}), levels {levels}")
            got = asyncio.run(
                measure(
                    t,
                    prompts,
                    levels,
                    args.requests_per_stream,
                    args.max_tokens,
                    args.temperature,
                    args.timeout,
                    progress,
                    args.warmup,
                )
            )
            results.append((t, got))
    except KeyboardInterrupt:
        progress.close()
        return _fail("interrupted")
    progress.close()
    summaries = [target_summary(t, lv) for t, lv in results]
    for (t, lv), s in zip(results, summaries, strict=True):
        print(f"\n{t.label}: {t.base_url} (model {t.model!r})", file=out)
        print(table(LEVEL_HEADER, level_rows(lv)), file=out)
        print(describe_saturation(s), file=out)
    if len(results) > 1:
        print("\ncomparison, each at its saturation point:", file=out)
        print(table(COMPARE_HEADER, [compare_row(s) for s in summaries]), file=out)
    if args.json:
        Path(args.json).write_text(
            json.dumps({"model": args.model, "targets": summaries}, indent=1)
        )
    if args.plot:
        _chart(args.plot, args.model, results)
        print(f"chart: {args.plot}", file=out)
    if args.write:
        return _write(source.path, args.model, summaries[0], argv, out)
    return 0 if all(s["saturation"] for s in summaries) else 1


def _write(path: Path, model: str, summary: dict[str, Any], argv: list[str], out: TextIO) -> int:
    from gateway.measure.rewrite import RewriteError, format_tps, write_tokens_per_second

    sat = summary["saturation"]
    if sat is None:
        return _fail(f"nothing measured; {path} left as it was")
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    comment = f"{day} by: tollgate bench-model {shlex.join(argv)}"
    try:
        write_tokens_per_second(path, model, sat["tokens_per_second"], comment)
    except (RewriteError, OSError) as e:
        return _fail(f"{path}: {e}")
    print(
        f"wrote {path}: {model} pricing.tokens_per_second = {format_tps(sat['tokens_per_second'])}",
        file=out,
    )
    return 0

"""`tollgate demo`: real answers of real models, routed by the gateway, on embedded defaults.

Starts the replay backends (recorded AlpacaEval answers of gemma-2b-it, vicuna-13b-v1.5,
humpback-llama2-70b and gpt-3.5-turbo-1106, see `gateway/demo/replay`) on the tier ports of the
default routing file (or free ports, handed to the gateway as TOLLGATE_*_URL), then the
gateway on the default routing file plus one addition: a judge model served by the replay,
sampled at 100 %, which returns each answer's recorded GPT-4-Turbo judgment. The store is
SQLite in a fresh temporary directory; no Redis, no network.

It sends N instructions through model="auto", waits for the judgments, and prints cost,
quality and latency of the routed traffic against each tier alone (always-small ...
always-large), the latter computed from the replay data for the same prompts with the same
pricing formulas: "cost vs always-<tier> (replayed answers)". It also prints the gateway's
own "savings vs reference (same tokens)" (the dashboard's number, see
`gateway.accounting.store.base.SAVINGS_DEFINITION`): the two answer different questions.
Then it keeps the dashboard open until Ctrl-C or SIGTERM (unless --no-wait) and stops
everything it started, by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx
import yaml

from gateway.accounting import pricing
from gateway.accounting.store.base import SAVINGS_DEFINITION, SAVINGS_NAME, percentile
from gateway.config import (
    DEFAULT_CONFIG_PATH,
    ConfigSource,
    ModelConfig,
    Pricing,
    find_config,
    load_config,
)
from gateway.demo.procutil import stop_process
from gateway.demo.replay import dataset
from gateway.demo.replay.process import ReplayServer
from gateway.demo.shares import Shares, shares

REPO = Path(__file__).resolve().parents[2]
# tier -> (env var of its endpoint URL, default port of the packaged routing file)
TIER_PORTS: dict[str, tuple[str, int]] = {
    "small": ("TOLLGATE_SMALL_URL", 8101),
    "medium": ("TOLLGATE_MEDIUM_URL", 8102),
    "large": ("TOLLGATE_LARGE_URL", 8103),
    "external": ("TOLLGATE_EXTERNAL_URL", 8104),
}
JUDGE_NAME = "replay-judge"


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def demo_config(base_text: str, judge_url: str) -> str:
    """The routing file plus the replay judge (a model without a router profile, so `auto`
    never routes to it) and `judge: {model: replay-judge, sample_rate: 1.0}`."""
    raw = yaml.safe_load(base_text)
    raw["models"] = [m for m in raw["models"] if m.get("name") != JUDGE_NAME]
    raw["models"].append(
        {
            "name": JUDGE_NAME,
            "tier": "external",
            "kinds": ["chat"],
            "pricing": {"input_per_mtok": 0.0, "output_per_mtok": 0.0},
            "endpoints": [{"base_url": judge_url, "model": dataset.JUDGE_MODEL}],
        }
    )
    raw["judge"] = {"model": JUDGE_NAME, "sample_rate": 1.0}
    header = (
        "# Written by `tollgate demo`: the embedded default routing file plus the replay judge.\n"
    )
    return header + yaml.safe_dump(raw, sort_keys=False)


@dataclass
class Result:
    instruction: str
    status: int = 0
    model: str | None = None
    tier: str | None = None
    latency_ms: float = 0.0
    error: str | None = None


@dataclass
class Row:
    name: str
    requests: int
    cost_usd: float
    quality: float | None
    p50_ms: float | None
    p95_ms: float | None
    mix: dict[str, int] = field(default_factory=dict)
    # routed only: the gateway's own savings number, as /v1/usage and the dashboard give it
    savings_vs_reference_pct: float | None = None
    reference_model: str | None = None


class Progress:
    def __init__(self, total: int, out: TextIO, width: int = 30) -> None:
        self.total, self.out, self.width = total, out, width
        self.done = 0
        self.tiers: dict[str, int] = {}
        self.errors = 0
        self.t0 = time.monotonic()
        self.tty = out.isatty()
        self._last_pct = -1

    def add(self, r: Result) -> None:
        self.done += 1
        if r.status == 200 and r.tier:
            self.tiers[r.tier] = self.tiers.get(r.tier, 0) + 1
        else:
            self.errors += 1
        pct = 100 * self.done // self.total
        if self.tty or pct // 10 != self._last_pct // 10 or self.done == self.total:
            self._last_pct = pct
            self.draw()

    def draw(self) -> None:
        fill = self.width * self.done // max(1, self.total)
        mix = " ".join(f"{t} {self.tiers[t]}" for t in dataset_tiers() if t in self.tiers)
        err = f"  errors {self.errors}" if self.errors else ""
        line = (
            f"[{'#' * fill}{'.' * (self.width - fill)}] {self.done}/{self.total} "
            f"{time.monotonic() - self.t0:5.1f}s  {mix}{err}"
        )
        self.out.write(("\r" + line) if self.tty else (line + "\n"))
        if self.tty and self.done == self.total:
            self.out.write("\n")
        self.out.flush()


def dataset_tiers() -> list[str]:
    return ["small", "medium", "large", "external"]


async def send_all(
    base_url: str, model: str, prompts: list[str], concurrency: int, stream_every: int,
    progress: Progress,
) -> list[Result]:  # fmt: skip
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=120.0, limits=limits) as client:

        async def one(i: int, prompt: str) -> Result:
            res = Result(prompt)
            body: dict[str, Any] = {
                "model": model,
                "messages": [{"role": "user", "content": prompt}],
            }
            stream = stream_every > 0 and i % stream_every == stream_every - 1
            if stream:
                body["stream"] = True
                body["stream_options"] = {"include_usage": True}
            async with sem:
                t0 = time.perf_counter()
                try:
                    if stream:
                        async with client.stream("POST", "/chat/completions", json=body) as r:
                            async for _ in r.aiter_bytes():
                                pass
                            resp = r
                    else:
                        resp = await client.post("/chat/completions", json=body)
                    res.status = resp.status_code
                    res.model = resp.headers.get("x-tollgate-model")
                    res.tier = resp.headers.get("x-tollgate-tier")
                    if resp.status_code != 200:
                        with contextlib.suppress(Exception):
                            res.error = str(resp.json()["error"]["message"])
                except httpx.HTTPError as e:
                    res.error = f"{type(e).__name__}: {e}"
                res.latency_ms = 1000 * (time.perf_counter() - t0)
            progress.add(res)
            return res

        return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts))))


def _replay_prices(cfg_path: Path) -> dict[str, Pricing | None]:
    """The routing file's pricing of each replayed model (by its profile, else its tier)."""
    cfg = load_config(cfg_path)
    by_profile = {m.profile: m for m in cfg.models if m.profile}
    by_tier: dict[str, ModelConfig] = {m.tier: m for m in cfg.models if m.name != JUDGE_NAME}
    return {
        model: pricing.resolve_pricing(by_profile.get(model) or by_tier[tier])
        for model, (tier, _speed) in dataset.REPLAY_MODELS.items()
    }


def routed_shares(cfg_path: Path, results: list[Result], reference: str = "large") -> Shares:
    """The routed answers' quality and cost as shares of always-`reference`'s on the same
    prompts, with 90% bootstrap intervals (each routed answer is its tier's replayed one)."""
    prices = _replay_prices(cfg_path)
    by_tier = {tier: model for model, (tier, _speed) in dataset.REPLAY_MODELS.items()}
    models = {m: dataset.load_model(m) for m in dataset.REPLAY_MODELS}
    ref = by_tier[reference]
    rq: list[float] = []
    rc: list[float] = []
    fq: list[float] = []
    fc: list[float] = []
    # in prompt order, not completion order: the same run always gives the same intervals
    for r in sorted(results, key=lambda r: r.instruction):
        model = by_tier.get(r.tier or "")
        if model is None:
            continue
        a, b = models[model].get(r.instruction), models[ref].get(r.instruction)
        assert a is not None and b is not None, "every demo prompt is in the replay set"
        tokens = dataset.prompt_tokens(r.instruction)
        rq.append(a.quality)
        rc.append(pricing.cost_usd(prices[model], tokens, a.completion_tokens))
        fq.append(b.quality)
        fc.append(pricing.cost_usd(prices[ref], tokens, b.completion_tokens))
    return shares(rq, rc, fq, fc)


def tier_rows(cfg_path: Path, prompts: list[str], speed: float) -> list[Row]:
    """Each tier alone on the same prompts, from the replay data and the config's pricing."""
    prices = _replay_prices(cfg_path)
    rows = []
    for model, (tier, _speed) in dataset.REPLAY_MODELS.items():
        price = prices[model]
        rm = dataset.load_model(model)
        cost, qual, lat = 0.0, [], []
        for p in prompts:
            a = rm.get(p)
            assert a is not None, "every demo prompt is in the replay set"
            cost += pricing.cost_usd(price, dataset.prompt_tokens(p), a.completion_tokens)
            qual.append(a.quality)
            lat.append(1000 * dataset.simulated_latency_s(model, a.completion_tokens, speed))
        lat.sort()
        rows.append(
            Row(
                f"always {tier}",
                len(prompts),
                cost,
                sum(qual) / len(qual),
                percentile(lat, 50),
                percentile(lat, 95),
                {tier: len(prompts)},
            )
        )
    return rows


def format_summary(
    routed: Row, tiers: list[Row], speed: float, model: str, vs_large: Shares | None = None
) -> str:
    def q(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:5.1f}"

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:,.0f}"

    n = max(1, routed.requests)
    lines = [
        f"{'':18}{'requests':>9}{'cost $':>12}{'$ / 1k req':>12}{'quality':>9}"
        f"{'p50 ms':>9}{'p95 ms':>9}",
    ]
    for r in [routed, *tiers]:
        lines.append(
            f"{r.name:18}{r.requests:>9}{r.cost_usd:>12.6f}{1000 * r.cost_usd / n:>12.4f}"
            f"{q(r.quality):>9}{ms(r.p50_ms):>9}{ms(r.p95_ms):>9}"
        )
    mix = "  ".join(
        f"{t} {100 * routed.mix.get(t, 0) / n:.0f}%" for t in dataset_tiers() if routed.mix.get(t)
    )
    lines.append("")
    lines.append(f"routed mix: {mix}")
    large = next(r for r in tiers if r.name == "always large")
    small = next(r for r in tiers if r.name == "always small")
    if large.cost_usd > 0 and routed.quality is not None and large.quality is not None:
        lines.append(
            f"{model} cost vs always-large (replayed answers): "
            f"{100 * (routed.cost_usd / large.cost_usd - 1):+.1f} %, "
            f"quality {100 * routed.quality:.1f} vs {100 * large.quality:.1f} "
            f"({100 * (routed.quality - large.quality):+.1f} points)"
        )
    if small.cost_usd > 0 and routed.quality is not None and small.quality is not None:
        lines.append(
            f"{model} cost vs always-small (replayed answers): "
            f"x{routed.cost_usd / small.cost_usd:.1f}, "
            f"quality {100 * (routed.quality - small.quality):+.1f} points"
        )
    if routed.savings_vs_reference_pct is not None:
        ref = f" (reference: {routed.reference_model})" if routed.reference_model else ""
        lines.append(
            f"{model} {SAVINGS_NAME}: {routed.savings_vs_reference_pct:.1f} %{ref}, "
            "the dashboard's number"
        )
    if vs_large is not None:
        lines.append(
            f"{model} per prompt vs always-large ({vs_large.n} prompts, 90% bootstrap "
            f"intervals): quality {vs_large.quality.pct()}, cost {vs_large.cost.pct()} of large's"
        )
    lines += [
        "",
        "cost vs always-<tier> (replayed answers): the routed cost against sending every",
        "  prompt to that tier, priced on that tier's own recorded answers (their own lengths).",
        *textwrap.wrap(f"{SAVINGS_NAME}: {SAVINGS_DEFINITION}.", 88, subsequent_indent="  "),
        "quality: the recorded GPT-4-Turbo AlpacaEval judgment of each replayed answer against",
        "  the gpt4_1106_preview reference (preference - 1, as a percentage: the win rate).",
        "cost: the routing file's pricing of each answer's tokens (estimated as chars / 4).",
        f"latency: replayed at --speed {speed:g} (1/{speed:g} of the simulated serving time); "
        "routed = measured",
        "  at the gateway, always-* = simulated from the same answers.",
    ]
    return "\n".join(lines)


class Stack:
    """The processes the demo starts; each stopped by its own PID."""

    def __init__(self) -> None:
        self.replay: ReplayServer | None = None
        self.gateway: subprocess.Popen[bytes] | None = None
        self.gateway_log: Path | None = None

    def stop(self) -> None:
        stop_process(self.gateway, grace=15)
        if self.replay is not None:
            self.replay.stop()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tollgate demo",
        description="Route recorded answers of real models (AlpacaEval) through the gateway.",
    )
    p.add_argument("--n", type=int, default=300, help="instructions to send (max 805)")
    p.add_argument("--model", default="auto", help='model name to request (default "auto")')
    p.add_argument("--speed", type=float, default=100.0, help="replay this many times faster")
    p.add_argument(
        "--concurrency", type=int, default=8, help="requests in flight (the judge keeps up)"
    )
    p.add_argument(
        "--stream-every", type=int, default=10, help="stream every Nth request (0: none)"
    )
    p.add_argument("--seed", type=int, default=0, help="which instructions (a seeded sample)")
    p.add_argument("--port", type=int, default=8000, help="gateway port (0 or taken: a free one)")
    p.add_argument(
        "--config",
        default=None,
        help="routing file (default: the packaged one; unlike serve, the demo does not read "
        "$TOLLGATE_CONFIG or ./tollgate.yaml, whose endpoints may be real, paid servers)",
    )
    p.add_argument(
        "--dir",
        default=None,
        help="folder for the SQLite store, the routing file and the gateway log, kept after "
        "the demo (default: a temporary folder, removed)",
    )
    p.add_argument(
        "--plot",
        default=None,
        metavar="FILE.png",
        help="also draw quality vs cost (needs pip install 'tollgate[plot]')",
    )
    p.add_argument(
        "--no-wait",
        action="store_true",
        help="stop everything after the summary, without keeping the dashboard open",
    )
    p.add_argument(
        "--heldout-only",
        action="store_true",
        help="only the instructions the router never saw in training",
    )
    return p


def pick_prompts(prompts_all: list[str], n: int, seed: int, heldout_only: bool) -> list[str]:
    """The router was trained on AlpacaEval: held-out instructions first, then the rest."""
    from router_models.data import is_heldout

    rng = random.Random(seed)
    held = [p for p in prompts_all if is_heldout(p)]
    rest = [p for p in prompts_all if not is_heldout(p)]
    rng.shuffle(held)
    rng.shuffle(rest)
    return (held if heldout_only else held + rest)[:n]


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM and SIGHUP stop the demo the way Ctrl-C does (so its cleanup runs)."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    args = _parser().parse_args(argv)
    if args.plot:
        from gateway.views.plot import PlotUnavailable, require

        try:
            require()  # say so now, not after the whole run
        except PlotUnavailable as e:
            print(f"tollgate demo --plot: {e}", file=sys.stderr)
            return 1
    prompts_all = dataset.instructions()
    n = max(1, min(args.n, len(prompts_all)))
    prompts = pick_prompts(prompts_all, n, args.seed, args.heldout_only)
    stack = Stack()
    # Without a handler, SIGTERM ends this process at once: no `finally`, so the gateway
    # child would keep running (reparented to PID 1) and the temp folder would stay.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, _interrupt) for s in STOP_SIGNALS} if main_thread else {}
    tmp = tempfile.TemporaryDirectory(prefix="tollgate-demo-")
    # absolute: the gateway child runs in this folder and is handed paths inside it
    workdir = Path(args.dir).resolve() if args.dir else Path(tmp.name)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        return _run(args, prompts, stack, workdir, out)
    except KeyboardInterrupt:
        return 130
    except RuntimeError as e:
        print(f"tollgate demo: {e}", file=sys.stderr)
        return 1
    finally:
        if main_thread:  # a second signal must not cut the cleanup short
            for s in (*STOP_SIGNALS, signal.SIGINT):
                previous.setdefault(s, signal.signal(s, signal.SIG_IGN))
        try:
            stack.stop()
            tmp.cleanup()
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


def _run(
    args: argparse.Namespace, prompts: list[str], stack: Stack, workdir: Path, out: TextIO
) -> int:
    source = (
        find_config(args.config)
        if args.config
        else ConfigSource(DEFAULT_CONFIG_PATH, "the packaged default; --config for another")
    )
    print(source, file=sys.stderr, flush=True)
    # 1. replay backends: the default ports when all are free, else free ports for all
    defaults = [port for _, port in TIER_PORTS.values()]
    ports = defaults if all(port_free(p) for p in defaults) else [0] * len(defaults)
    stack.replay = ReplayServer(ports, speed=args.speed).start()
    env = dict(os.environ)
    for i, (var, _) in enumerate(TIER_PORTS.values()):
        env[var] = stack.replay.url(i)
    judge_url = stack.replay.url(3)
    print(
        f"replay backends (recorded AlpacaEval answers, x{args.speed:g} speed) on ports "
        + ", ".join(f"{t} {p}" for t, p in zip(TIER_PORTS, stack.replay.ports, strict=True)),
        file=out,
    )
    # 2. the gateway on the routing file + the replay judge; SQLite in workdir
    base = source.path
    cfg_path = workdir / "routing.yaml"
    cfg_path.write_text(demo_config(base.read_text(), judge_url))
    env.update(TOLLGATE_STORE="sqlite", TOLLGATE_DB=str(workdir / "tollgate.db"))
    env["PYTHONPATH"] = os.pathsep.join(x for x in (str(REPO), env.get("PYTHONPATH", "")) if x)
    old = {k: os.environ.get(k) for k in (*[v for v, _ in TIER_PORTS.values()], "TOLLGATE_DB")}
    os.environ.update({k: env[k] for k in old})
    try:
        load_config(cfg_path)  # fail here, with the config error, rather than in the child
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    port = args.port if args.port and port_free(args.port) else free_port()
    stack.gateway_log = workdir / "gateway.log"
    with open(stack.gateway_log, "wb") as log:
        stack.gateway = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway.cli",
                "serve",
                "--config",
                str(cfg_path),
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(workdir),
        )
    url = f"http://127.0.0.1:{port}"
    _wait_healthy(stack, url)
    served = [m["id"] for m in httpx.get(f"{url}/v1/models", timeout=5).json()["data"]]
    if args.model not in served and not args.model.startswith("router-"):
        raise RuntimeError(
            f"the gateway does not serve model {args.model!r} (it serves {', '.join(served)}); "
            "is the router artifact installed?"
        )
    print(f"gateway on {url}", file=out)
    print(f"  routing file {base} plus the replay judge: {cfg_path}", file=out)
    print(f"  store SQLite at {workdir / 'tollgate.db'}", file=out)
    from router_models.data import is_heldout

    held = sum(1 for p in prompts if is_heldout(p))
    print(
        f'sending {len(prompts)} AlpacaEval instructions as model="{args.model}" '
        f"({held} of them held out from the router's training)",
        file=out,
    )
    # 3. traffic
    started = time.time() - 1.0
    progress = Progress(len(prompts), out)
    results = asyncio.run(
        send_all(f"{url}/v1", args.model, prompts, args.concurrency, args.stream_every, progress)
    )
    ok = [r for r in results if r.status == 200]
    failed = [r for r in results if r.status != 200]
    if failed:
        print(
            f"{len(failed)} requests failed, e.g.: {failed[0].status} {failed[0].error}", file=out
        )
    if not ok:
        raise RuntimeError(f"no request succeeded; gateway log: {stack.gateway_log}")
    # 4. wait for the judge's scores and the recorder, then read /v1/usage
    usage = _wait_usage(url, started, len(results), len(ok))
    tiers = tier_rows(cfg_path, [r.instruction for r in ok], args.speed)
    routed = _routed_row(url, started, usage, args.model)
    print("", file=out)
    shares_vs_large = routed_shares(cfg_path, ok)
    name = f'routed ("{args.model}")'
    print(format_summary(routed, tiers, args.speed, name, shares_vs_large), file=out)
    if args.plot:
        from gateway.views.plot import report_chart

        report_chart(
            args.plot,
            title=f"Demo: {routed.requests} AlpacaEval instructions, routed vs one tier",
            groups=[(r.name, _per_1k(r), r.quality) for r in tiers],
            mix=(routed.name, _per_1k(routed), routed.quality),
            group_noun="tier",
            x_label="cost (USD per 1,000 requests)",
            y_label="quality (AlpacaEval judgment, 0-1)",
        )
        print(f"plot: {args.plot}", file=out)
    print("", file=out)
    if args.no_wait:  # everything stops on return: an address to visit would not answer
        db = workdir / "tollgate.db"
        if args.dir:
            print(f"records kept in {db}: TOLLGATE_DB={db} tollgate report --since 1h", file=out)
        else:
            print("the temporary store goes with the demo; --dir DIR keeps it", file=out)
        return 0
    print(f"dashboard: {url}/dashboard", file=out)
    print("Ctrl-C stops the gateway and the replay backends.", file=out)
    out.flush()
    try:
        while stack.gateway is not None and stack.gateway.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nstopping", file=out)
        out.flush()
        return 0
    raise RuntimeError(f"the gateway exited; log: {stack.gateway_log}")


def _per_1k(r: Row) -> float:
    return r.cost_usd / max(1, r.requests) * 1000


def _wait_healthy(stack: Stack, url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert stack.gateway is not None
        if stack.gateway.poll() is not None:
            log = stack.gateway_log.read_text(errors="replace") if stack.gateway_log else ""
            raise RuntimeError(f"the gateway exited at start:\n{log[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"the gateway did not come up within {timeout:.0f}s")


def _wait_usage(
    url: str, since: float, sent: int, ok: int, timeout: float = 60.0
) -> dict[str, Any]:
    """GET /v1/usage by tier once every request is recorded and every answer judged."""
    deadline = time.monotonic() + timeout
    data: dict[str, Any] = {}
    last, still_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        data = httpx.get(
            f"{url}/v1/usage", params={"since": str(since), "group_by": "tier"}, timeout=10
        ).json()
        t = data["totals"]
        recorded = t["requests"] >= sent and not data.get("pending_records")
        if recorded and t["quality_n"] >= ok:
            return data
        if t["quality_n"] != last:
            last, still_since = t["quality_n"], time.monotonic()
        elif recorded and time.monotonic() - still_since > 5.0:
            break  # the judge skipped some (it sheds load when busy); no more are coming
        time.sleep(0.25)
    t = data.get("totals", {})
    print(
        f"(judge: {t.get('quality_n')} of {ok} answers scored; the routed quality is their mean)",
        file=sys.stderr,
    )
    return data


def _routed_row(url: str, since: float, usage: dict[str, Any], model: str) -> Row:
    t = usage["totals"]
    by_route = httpx.get(
        f"{url}/v1/usage", params={"since": str(since), "group_by": "route"}, timeout=10
    ).json()["data"]
    route = next((r for r in by_route if r["group"] == model), None)
    mix = {r["group"]: int(r["requests"]) - int(r["errors"]) for r in usage["data"]}
    recent = httpx.get(f"{url}/dashboard/data", params={"since": str(since)}, timeout=10).json()
    reference = next((r["reference_model"] for r in recent["recent"] if r["route"] == model), None)
    return Row(
        f'routed ("{model}")',
        int(t["requests"]),
        float(t["cost_usd"]),
        t["quality_mean"],
        route["latency_p50_ms"] if route else None,
        route["latency_p95_ms"] if route else None,
        mix,
        t["savings_vs_reference_pct"],
        reference,
    )


if __name__ == "__main__":
    raise SystemExit(main())

"""Gateway overhead benchmark: the same load DIRECT to a fake upstream and THROUGH Tollgate.

    .venv/bin/python bench/overhead.py                 # full run, writes bench/results/latest.md
    .venv/bin/python bench/overhead.py --quick --no-write

Layout (2+ cores): the gateway is pinned to core 0 (`taskset -c 0`, one uvicorn worker via
`tollgate serve`); the fake upstream, the load generator and this harness are pinned to
core 1. Scenarios (each DIRECT and THROUGH every target, back to back):

  a  concurrency 1, 2,000 requests, upstream latency 0       latency p50/p99, added latency
  b  concurrency 64, upstream latency 50 ms, 20 s             req/s and p99 vs direct
  c  concurrency 256, upstream latency 0, 20 s                the most req/s one core carries
  d  streaming, concurrency 16, 20 chunks, 20 s               TTFB and total p50, req/s

Non-streamed load comes from Debian's `wrk` (`--latency`, a Lua `done()` printing the
percentiles as JSON and its exact latency histogram); without wrk the harness says so and
uses its asyncio client. Streams are measured by the asyncio client (raw asyncio streams,
one keep-alive connection per worker), which records the time to the first SSE byte.

Each scenario runs in interleaved rounds (--rounds, default 4); a target's latency
percentiles are over all its requests, the rounds pooled. `direct again (A/A control)`
measures the upstream a second time: its distance from `direct` is the measure's own noise.

Every run is bounded in requests and time and ends by itself; only processes this script
started are ever signalled, by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import hashlib
import itertools
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from gateway.demo.procutil import stop_process  # noqa: E402
from tests.fake_upstream import FakeUpstream  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# The full tables of the latest runs; BENCHMARKS.md keeps one summary table, updated by hand
# from these, so that it stays one page.
BENCHMARKS = RESULTS_DIR / "latest.md"
GW_CORE = "0"
LOAD_CORE = "1"
BEARER = "sk-bench-0000"
AUTH = {"Authorization": f"Bearer {BEARER}"}
PROMPT = "Write one short sentence about toll roads for a benchmark."
INTRO = (
    "# Benchmark runs: full tables\n\nWritten by the scripts under bench/; the summary with "
    "targets is BENCHMARKS.md.\n"
)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------------------------
# machine, pinning
# --------------------------------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def git_commit() -> str:
    """Short HEAD, plus the gateway files that differ from it (the code actually measured)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--", "gateway", "router_models", "pyproject.toml"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    changed = sorted({ln[3:].strip() for ln in status if ln.strip()})
    if changed:
        shown = ", ".join(changed[:8]) + (" ..." if len(changed) > 8 else "")
        return f"{commit or 'unknown'}` + uncommitted changes to `{shown}"
    return commit or "unknown"


def can_pin() -> bool:
    return (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None


def pin_prefix(core: str) -> list[str]:
    return ["taskset", "-c", core] if can_pin() else []


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def machine_line() -> str:
    return f"nproc {os.cpu_count()}, CPU {cpu_model()}, Linux {platform.release()}"


def proc_cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds of a process (all its threads)."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def steal_ms() -> dict[str, float]:
    """Milliseconds each core has lost to the hypervisor since boot (/proc/stat `steal`), by
    core number as a string. Ticks are 10 ms, so this is coarse, but summed over a scenario it
    shows which cores other tenants took time from while the latencies were measured."""
    out: dict[str, float] = {}
    with contextlib.suppress(OSError):
        tick_ms = 1000 / os.sysconf("SC_CLK_TCK")
        for line in Path("/proc/stat").read_text().splitlines():
            name, *vals = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and len(vals) > 7:
                out[name[3:]] = int(vals[7]) * tick_ms
    return out


def gateway_counts(addr: tuple[str, int], settle_s: float = 10.0) -> dict[str, Any] | None:
    """From the gateway's /metrics, once its writer has caught up (or `settle_s` has passed):
    requests answered, records the store's buffer dropped and still holds, and as cumulative
    bucket counts the gateway's own measure of its overhead (latency minus upstream time)
    and of its event loop's lag (a 100 ms timer's lateness)."""
    url = f"http://{addr[0]}:{addr[1]}/metrics"
    deadline = time.monotonic() + settle_s
    while True:
        try:
            text = httpx.get(url, timeout=5.0, trust_env=False, headers=AUTH).text
        except httpx.HTTPError:
            return None
        got: dict[str, Any] = {
            "requests": 0, "dropped": 0, "buffered": 0, "overhead_le": {}, "lag_le": {}
        }  # fmt: skip
        for line in text.splitlines():
            name, _, value = line.rpartition(" ")
            if name.startswith("tollgate_requests_total{"):
                got["requests"] += int(float(value))
            elif name == "tollgate_store_dropped_records_total":
                got["dropped"] = int(float(value))
            elif name == "tollgate_store_queue_depth":
                got["buffered"] = int(float(value))
            elif name.startswith('tollgate_gateway_overhead_seconds_bucket{le="'):
                got["overhead_le"][name.split('"')[1]] = int(float(value))
            elif name.startswith('tollgate_event_loop_lag_seconds_bucket{le="'):
                got["lag_le"][name.split('"')[1]] = int(float(value))
        if got["buffered"] == 0 or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def overhead_shares(le: dict[str, int], bounds: Sequence[str] = ("0.001", "0.002")) -> str:
    """'99.1% <= 1 ms, 99.8% <= 2 ms' from cumulative bucket counts."""
    total = le.get("+Inf", 0)
    if not total:
        return "-"
    return ", ".join(
        f"{le.get(b, 0) / total * 100:.1f}% <= {float(b) * 1000:g} ms" for b in bounds if b in le
    )


def late_counts(le: dict[str, int], bounds: Sequence[str] = ("0.002", "0.005", "0.01")) -> str:
    """'12 samples > 2 ms, 3 > 5 ms, 0 > 10 ms of 240' from cumulative bucket counts."""
    total = le.get("+Inf", 0)
    parts = [f"{total - le.get(b, 0):,} > {float(b) * 1000:g} ms" for b in bounds if b in le]
    return ", ".join(parts) + f" of {total:,} samples"


def rss_mib(pid: int) -> float | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return None


# --------------------------------------------------------------------------------------------
# scenarios
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    concurrency: int
    latency_ms: float
    stream: bool = False
    requests: int | None = None  # fixed request count (a) ...
    duration_s: float = 0.0  # ... or fixed duration (b, c, d)
    chunks: int = 20


def make_scenarios(quick: bool) -> dict[str, Scenario]:
    dur = 3.0 if quick else 20.0
    return {
        "a": Scenario(
            "a", "concurrency 1, upstream latency 0", 1, 0.0, requests=300 if quick else 2000
        ),
        "b": Scenario("b", "concurrency 64, upstream latency 50 ms", 64, 50.0, duration_s=dur),
        "c": Scenario("c", "concurrency 256, upstream latency 0", 256, 0.0, duration_s=dur),
        "d": Scenario(
            "d", "streaming, concurrency 16, 20 chunks, latency 0", 16, 0.0, True, duration_s=dur
        ),
    }


# --------------------------------------------------------------------------------------------
# processes: the fake upstream and targets
# --------------------------------------------------------------------------------------------


class PinnedFake(FakeUpstream):
    """The fake upstream, pinned to the load core (taskset execs, so the PID is the server's)."""

    def _command(self, port: int) -> list[str]:
        return [*pin_prefix(LOAD_CORE), *super()._command(port)]


class TargetUnavailable(Exception):
    pass


NO_SEED, SAME_SEED, NEW_SEED = 0, 1, 2
SEED0 = 1_000_000_000  # 10 digits: a new seed per request keeps the body's length
SEEDS = itertools.count(SEED0 + 1)  # never the same twice in a run: warm-ups and rounds too


class Target:
    """Something the load is sent to. `start` returns (host, port)."""

    name = "target"
    model = "fake-model"
    pid: int | None = None
    seeded = NO_SEED  # --cache runs: the requests carry a seed, the same one or a new one each
    api = "chat"  # the client API the load speaks (APIS)

    def start(self, upstream: FakeUpstream) -> tuple[str, int]:
        raise NotImplementedError

    def stop(self) -> None:
        pass


class Direct(Target):
    name = "direct"

    def __init__(self, name: str = "direct") -> None:
        self.name = name

    def start(self, upstream: FakeUpstream) -> tuple[str, int]:
        self.model = "fake-model"
        return "127.0.0.1", upstream.port


# The same upstream measured a second time, as a target of its own: its distance from
# "direct" is the measure's own noise (an A/A test), printed beside the gateways' distances.
CONTROL = "direct again (A/A control)"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Tiers as in the packaged routing file, gateway/defaults/routing.yaml:
# (name, tier, router profile, pricing).
_HW = "{{hardware_usd_per_hour: {}, tokens_per_second: {}}}"
TIERS = [
    ("small", "small", "gemma-2b-it", _HW.format(0.35, 120)),
    ("medium", "medium", "vicuna-13b-v1.5", _HW.format(1.2, 60)),
    ("large", "large", "humpback-llama2-70b", _HW.format(4.8, 30)),
    (
        "gpt-3.5-turbo",
        "external",
        "gpt-3.5-turbo-1106",
        "{input_per_mtok: 1.0, output_per_mtok: 2.0}",
    ),
]


def routing_yaml(
    upstream_base: str,
    store: str,
    mode: str,
    tmp: Path,
    journal: bool = True,
    limits: str = "off",
    redis_url: str | None = None,
    cache: bool = False,
    sticky: bool = True,
) -> str:
    """Every tier points at the fake upstream; `auto` mode adds router profiles; `journal`
    off turns the store's record journal off (store.journal); `limits` local or redis gives
    the bench key an rpm, a tpm and a budget it never reaches (limits.backend); `cache` turns
    the response cache on for every model (`cache: true`); `sticky` off turns conversation
    stickiness off (router.sticky.enabled)."""
    lines = [
        "version: 1",
        "server:",
        "  drain_timeout_s: 1",
        "store:",
        f"  backend: {store}",
        f"  sqlite_path: {tmp / 'tollgate.db'}",
        f"  journal: {'true' if journal else 'false'}",
        # gateway keys on, as users run it (and as LiteLLM, which needs a master key, is run)
        "auth:",
        "  keys:",
        f"    - {{id: bench, sha256: {hashlib.sha256(BEARER.encode()).hexdigest()}"
        + (", rpm: 100000000, tpm: 100000000000, budget_usd: 1e12}" if limits != "off" else "}"),
    ]
    if limits != "off":
        lines += ["limits:", f"  backend: {limits}", f"  local_path: {tmp / 'limits.bin'}"]
        if redis_url:
            lines.append(f"  redis_url: {redis_url}")
    lines.append("models:")
    for name, tier, profile, price in TIERS:
        lines += [f"  - name: {name}", f"    tier: {tier}"]
        if mode == "auto":
            lines.append(f"    profile: {profile}")
        if cache:
            lines.append("    cache: true")
        lines += [
            f"    pricing: {price}",
            "    endpoints:",
            f"      - base_url: {upstream_base}",
            f"        model: {profile}",
        ]
    if mode == "auto":
        lines += ["router:", "  artifact: default", "  default_policy: balanced"]
        if not sticky:
            lines.append("  sticky: {enabled: false}")
    return "\n".join(lines) + "\n"


def tollgate_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "tollgate"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "gateway.cli"]


def chat_body(model: str, stream: bool, seeded: int = NO_SEED) -> bytes:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 32,
    }
    if stream:
        body["stream"] = True
    if seeded != NO_SEED:
        body["seed"] = SEED0  # deterministic: what the response cache keeps
    return json.dumps(body, separators=(",", ":")).encode()


# the client APIs a target can be measured through (--api): path, and the bytes that end a
# complete streamed answer
APIS = {
    "chat": ("/v1/chat/completions", b"[DONE]"),
    "messages": ("/v1/messages", b"message_stop"),  # Anthropic's, translated to chat
    "responses": ("/v1/responses", b"event: response.completed"),  # OpenAI's, translated
}


def request_body(api: str, model: str, stream: bool, seeded: int = NO_SEED) -> bytes:
    """The benchmark request in the target's API: the same prompt and max_tokens."""
    if api == "chat":
        return chat_body(model, stream, seeded)
    body: dict[str, Any]
    if api == "responses":
        body = {"model": model, "input": PROMPT, "max_output_tokens": 32}
        if stream:
            body["stream"] = True
        return json.dumps(body, separators=(",", ":")).encode()
    body = {
        "model": model,
        "max_tokens": 32,
        "messages": [{"role": "user", "content": PROMPT}],
    }
    if stream:
        body["stream"] = True
    return json.dumps(body, separators=(",", ":")).encode()


def probe(host: str, port: int, model: str, timeout: float = 10.0) -> None:
    """One non-streamed and one streamed request; TargetUnavailable if either fails."""
    with httpx.Client(trust_env=False, timeout=timeout) as c:
        for stream in (False, True):
            r = c.post(
                f"http://{host}:{port}/v1/chat/completions",
                content=chat_body(model, stream),
                headers={"content-type": "application/json", "authorization": f"Bearer {BEARER}"},
            )
            if r.status_code != 200 or (stream and b"[DONE]" not in r.content):
                raise TargetUnavailable(
                    f"{'streamed' if stream else 'unary'} probe with model={model!r} got HTTP "
                    f"{r.status_code}: {r.text[:300]}"
                )


class ServerProcess(Target):
    """A server started as a subprocess, pinned to the gateway core, stopped by its PID."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.tmp: Path | None = None
        self.logf: Any = None

    @property
    def pid(self) -> int | None:  # type: ignore[override]
        return self.proc.pid if self.proc is not None else None

    def command(self, upstream: FakeUpstream, tmp: Path) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def health_path(self) -> str:
        return "/healthz"

    def startup_timeout(self) -> float:
        return 30.0

    def start(self, upstream: FakeUpstream) -> tuple[str, int]:
        self.tmp = Path(tempfile.mkdtemp(prefix=f"bench-{self.name.replace(' ', '-')}-"))
        self.port = free_port()
        cmd, env = self.command(upstream, self.tmp)
        self.logf = open(self.tmp / "server.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd, stdout=self.logf, stderr=subprocess.STDOUT, env=env, cwd=str(self.tmp)
        )
        deadline = time.monotonic() + self.startup_timeout()
        url = f"http://127.0.0.1:{self.port}{self.health_path()}"
        while True:
            if self.proc.poll() is not None:
                raise TargetUnavailable(
                    f"{self.name} exited at startup (code {self.proc.returncode}): "
                    + self.log_tail()
                )
            try:
                r = httpx.get(url, timeout=1.0, trust_env=False, headers=self.auth_headers())
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TargetUnavailable(f"{self.name} not healthy in time: " + self.log_tail())
            time.sleep(0.1)
        try:
            probe("127.0.0.1", self.port, self.model)
        except (TargetUnavailable, httpx.HTTPError) as e:
            self.stop()
            raise TargetUnavailable(f"{e}; log: {self.log_tail()}") from None
        return "127.0.0.1", self.port

    def auth_headers(self) -> dict[str, str]:
        return {}

    def log_tail(self, n: int = 6) -> str:
        if self.tmp is None:
            return ""
        with contextlib.suppress(OSError):
            lines = (self.tmp / "server.log").read_text(errors="replace").strip().splitlines()
            return " | ".join(x.strip() for x in lines[-n:])
        return ""

    def stop(self) -> None:
        stop_process(self.proc, grace=15)
        redis = getattr(self, "redis", None)
        if redis is not None:
            redis.stop()
            self.redis = None
        if self.logf is not None:
            self.logf.close()
            self.logf = None
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


class Tollgate(ServerProcess):
    def __init__(
        self,
        store: str = "none",
        mode: str = "pinned",
        journal: bool = True,
        limits: str = "off",
        cache: str = "",
        api: str = "chat",
    ) -> None:
        super().__init__()
        self.api = api
        self.store = store
        self.mode = mode
        self.journal = journal
        self.limits = limits
        self.redis: Any = None
        self.name = (
            f"tollgate {mode} store={store}"
            + ("" if journal else " journal=off")
            + ("" if limits == "off" else f" limits={limits}")
            + ("" if api == "chat" else f" api={api}")
        )
        self.cache = cache  # "" | off | miss | hit (--cache)
        if cache:
            self.name += f" cache={cache}"
            self.seeded = SAME_SEED if cache == "hit" else NEW_SEED
        self.model = "auto" if mode == "auto" else "small"

    def command(self, upstream: FakeUpstream, tmp: Path) -> tuple[list[str], dict[str, str]]:
        cfg = tmp / "routing.yaml"
        url = None
        if self.limits == "redis":  # a private redis-server on the load core
            from tests.redis_server import RedisServer

            self.redis = RedisServer(tmp / "redis").start()
            if can_pin():
                subprocess.run(["taskset", "-pc", LOAD_CORE, str(self.redis.proc.pid)],
                               capture_output=True, check=False)  # fmt: skip
            url = self.redis.url
        text = routing_yaml(
            upstream.base_url,
            self.store,
            self.mode,
            tmp,
            self.journal,
            self.limits,
            url,
            self.cache in ("miss", "hit"),
        )
        cfg.write_text(text)
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO)
        cmd = [
            *pin_prefix(GW_CORE),
            *tollgate_cmd(),
            "serve",
            "--config",
            str(cfg),
            "--port",
            str(self.port),
            "--log-level",
            "warning",
        ]
        return cmd, env


# --------------------------------------------------------------------------------------------
# load generators
# --------------------------------------------------------------------------------------------

WRK_LUA = r"""
wrk.method = "POST"
wrk.path = "%(path)s"
wrk.body = [==[%(body)s]==]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(bearer)s"
local limit = %(limit)d
if limit > 0 then
  local count = 0
  function response(status, headers, body)
    count = count + 1
    if count == limit then
      io.write("BENCH_DONE\n")
      io.flush()
      wrk.thread:stop()
    end
  end
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%%d,"duration_us":%%d,"connect_errors":%%d,"read_errors":%%d,' ..
    '"write_errors":%%d,"status_errors":%%d,"timeouts":%%d,"p50_us":%%d,"p90_us":%%d,' ..
    '"p99_us":%%d,"p999_us":%%d,"mean_us":%%.1f,"max_us":%%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.mean, latency.max))
  -- every distinct latency (us) and how many requests had it, so that rounds pool exactly
  local parts = {}
  for i = 1, #latency do
    local v, c = latency(i)
    parts[#parts + 1] = string.format("%%d:%%d", v, c)
  end
  io.write("BENCH_HIST " .. table.concat(parts, ",") .. "\n")
end
"""


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(
    host: str,
    port: int,
    model: str,
    concurrency: int,
    duration_s: float,
    requests: int = 0,
    workdir: Path | None = None,
    lua: str | None = None,
    api: str = "chat",
) -> dict[str, Any]:
    """wrk -t1 (one thread: it shares a core with the upstream); stops after `requests` if > 0.

    `lua` replaces the request script (it must print BENCH_JSON as WRK_LUA's done() does)."""
    workdir = workdir or Path(tempfile.gettempdir())
    script = workdir / f"bench-{os.getpid()}.lua"
    script.write_text(
        lua
        or WRK_LUA
        % {
            "body": request_body(api, model, False).decode(),
            "bearer": BEARER,
            "limit": requests,
            "path": APIS[api][0],
        }
    )
    cmd = [
        *pin_prefix(LOAD_CORE),
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{max(1, round(duration_s))}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(script),
        f"http://{host}:{port}{APIS[api][0]}",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    out: list[str] = []
    try:
        for raw in proc.stdout:
            line = raw.decode(errors="replace")
            out.append(line)
            if line.startswith("BENCH_DONE") and proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # wrk ends its sleep and reports
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        script.unlink(missing_ok=True)
    js = [ln for ln in out if ln.startswith("BENCH_JSON ")]
    if not js:
        raise RuntimeError("wrk printed no result:\n" + "".join(out[-20:]))
    d = json.loads(js[-1][len("BENCH_JSON ") :])
    secs = d["duration_us"] / 1e6
    errors = sum(
        d[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
    )
    hist: list[tuple[int, int]] = []
    hl = [ln for ln in out if ln.startswith("BENCH_HIST ")]
    if hl and hl[-1].strip() != "BENCH_HIST":
        for pair in hl[-1][len("BENCH_HIST ") :].strip().split(","):
            v, _, c = pair.partition(":")
            hist.append((int(v), int(c)))
    return {
        "tool": "wrk",
        "hist_us": hist,
        "requests": d["requests"],
        "errors": errors,
        "seconds": round(secs, 3),
        "rps": d["requests"] / secs if secs > 0 else 0.0,
        "p50_ms": d["p50_us"] / 1000.0,
        "p90_ms": d["p90_us"] / 1000.0,
        "p99_ms": d["p99_us"] / 1000.0,
        "p999_ms": d["p999_us"] / 1000.0,
        "mean_ms": d["mean_us"] / 1000.0,
        "max_ms": d["max_us"] / 1000.0,
    }


def _pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, round(p / 100.0 * (len(xs) - 1))))
    return xs[k]


async def _read_response(
    reader: asyncio.StreamReader, t0: float
) -> tuple[int, float | None, bool, bytes]:
    """Read one HTTP/1.1 response; returns (status, first body byte time, keep-alive, body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    hdrs: dict[bytes, bytes] = {}
    for ln in lines[1:]:
        if b":" in ln:
            k, v = ln.split(b":", 1)
            hdrs[k.strip().lower()] = v.strip()
    first: float | None = None
    parts: list[bytes] = []
    if hdrs.get(b"transfer-encoding", b"").lower() == b"chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                break
            data = await reader.readexactly(size + 2)
            if first is None:
                first = time.perf_counter() - t0
            parts.append(data[:-2])
    elif b"content-length" in hdrs:
        n = int(hdrs[b"content-length"])
        parts.append(await reader.readexactly(n))
        first = time.perf_counter() - t0
    else:
        parts.append(await reader.read())
        first = time.perf_counter() - t0
        return status, first, False, b"".join(parts)
    keep = hdrs.get(b"connection", b"").lower() != b"close"
    return status, first, keep, b"".join(parts)


async def _client_run(
    host: str,
    port: int,
    body: bytes,
    concurrency: int,
    duration_s: float,
    requests: int,
    stream: bool,
    new_seed: bool = False,
    api: str = "chat",
) -> dict[str, Any]:
    path, end = APIS[api]
    req = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nAuthorization: Bearer {BEARER}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    seed_at = req.rfind(str(SEED0).encode()) if new_seed else -1
    totals: list[float] = []
    ttfbs: list[float] = []
    errors = 0
    budget = [requests]
    start = time.perf_counter()
    deadline = start + (duration_s if duration_s > 0 else 600.0)

    async def worker() -> None:
        nonlocal errors
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        while time.perf_counter() < deadline:
            if requests > 0:
                if budget[0] <= 0:
                    break
                budget[0] -= 1
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                assert reader is not None
                if seed_at >= 0:  # a request the gateway has not seen: a cache miss
                    seed = str(next(SEEDS)).encode()
                    writer.write(req[:seed_at] + seed + req[seed_at + len(seed) :])
                    t0 = time.perf_counter()
                else:
                    t0 = time.perf_counter()
                    writer.write(req)
                status, first, keep, data = await asyncio.wait_for(_read_response(reader, t0), 30.0)
                total = time.perf_counter() - t0
                ok = status == 200 and (not stream or end in data)
                if ok:
                    totals.append(total)
                    if first is not None:
                        ttfbs.append(first)
                else:
                    errors += 1
                if not keep:
                    writer.close()
                    writer = None
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
                errors += 1
                if writer is not None:
                    writer.close()
                writer = None
                await asyncio.sleep(0.01)
        if writer is not None:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    secs = time.perf_counter() - start
    ms = 1000.0
    res: dict[str, Any] = {
        "tool": "asyncio-client",
        "requests": len(totals),
        "errors": errors,
        "seconds": round(secs, 3),
        "rps": len(totals) / secs if secs > 0 else 0.0,
        "p50_ms": _pct(totals, 50) * ms,
        "p90_ms": _pct(totals, 90) * ms,
        "p99_ms": _pct(totals, 99) * ms,
        "mean_ms": (sum(totals) / len(totals) * ms) if totals else float("nan"),
        "samples_ms": [t * ms for t in totals],
    }
    if stream:
        res["ttfb_p50_ms"] = _pct(ttfbs, 50) * ms
        res["ttfb_p99_ms"] = _pct(ttfbs, 99) * ms
        res["ttfb_samples_ms"] = [t * ms for t in ttfbs]
    return res


def run_client(
    host: str,
    port: int,
    model: str,
    concurrency: int,
    duration_s: float,
    requests: int = 0,
    stream: bool = False,
    seeded: int = NO_SEED,
    api: str = "chat",
) -> dict[str, Any]:
    import uvloop

    body = request_body(api, model, stream, seeded)
    coro = _client_run(
        host, port, body, concurrency, duration_s, requests, stream, seeded == NEW_SEED, api
    )
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


# --------------------------------------------------------------------------------------------
# the matrix
# --------------------------------------------------------------------------------------------


@dataclass
class Run:
    scenarios: list[Scenario]
    targets: list[Target]
    quick: bool
    rounds: int = 1
    results: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # scen -> target
    unavailable: dict[str, str] = field(default_factory=dict)
    steal: dict[str, dict[str, float]] = field(default_factory=dict)  # scen -> target -> ms


def measure(
    sc: Scenario,
    host: str,
    port: int,
    model: str,
    quick: bool,
    warm_s: float | None = None,
    seeded: int = NO_SEED,
    api: str = "chat",
) -> dict[str, Any]:
    warm_s = (0.5 if quick else 2.0) if warm_s is None else warm_s

    def load(seconds: float, requests: int) -> dict[str, Any]:
        """`requests` one at a time (capped at 300 s), or `seconds` at the concurrency. With
        a seed (--cache runs) the asyncio client sends them, wrk or not."""
        conc = 1 if requests else sc.concurrency
        if have_wrk() and not sc.stream and seeded == NO_SEED:
            return run_wrk(host, port, model, conc, 300 if requests else seconds, requests, api=api)
        secs = 0 if requests else seconds
        return run_client(host, port, model, conc, secs, requests, sc.stream, seeded, api)

    n = sc.requests or 0
    if warm_s > 0:
        load(warm_s, max(50, n // 10) if n else 0)
    return load(sc.duration_s, n)


_MEDIAN_KEYS = (
    "p50_ms", "p90_ms", "p99_ms", "p999_ms", "mean_ms", "ttfb_p50_ms", "ttfb_p99_ms"
)  # fmt: skip
_RAW_KEYS = ("hist_us", "samples_ms", "ttfb_samples_ms")


def hist_percentile(hist: Sequence[tuple[int, int]], p: float) -> int:
    """wrk's own percentile (stats_percentile) over a histogram of (value, count) pairs."""
    total = sum(c for _, c in hist)
    rank = round(p / 100.0 * total + 0.5)
    seen = 0
    for v, c in hist:
        seen += c
        if seen >= rank:
            return v
    return hist[-1][0] if hist else 0


def pooled_latencies(rounds: list[dict[str, Any]]) -> dict[str, float]:
    """Percentiles of all the rounds' requests together: what one run of the whole duration
    would report (the issue's "20 s ... p99"), from wrk's exact histograms or the asyncio
    client's samples. Empty if a round lacks its raw latencies."""
    out: dict[str, float] = {}
    if all(r.get("hist_us") for r in rounds):
        merged: dict[int, int] = {}
        for r in rounds:
            for v, c in r["hist_us"]:
                merged[v] = merged.get(v, 0) + c
        hist = sorted(merged.items())
        n = sum(c for _, c in hist)
        for key, p in (("p50_ms", 50), ("p90_ms", 90), ("p99_ms", 99), ("p999_ms", 99.9)):
            out[key] = hist_percentile(hist, p) / 1000.0
        out["mean_ms"] = sum(v * c for v, c in hist) / n / 1000.0
        out["max_ms"] = hist[-1][0] / 1000.0
    elif all(r.get("samples_ms") for r in rounds):
        xs = [x for r in rounds for x in r["samples_ms"]]
        for key, p in (("p50_ms", 50), ("p90_ms", 90), ("p99_ms", 99)):
            out[key] = _pct(xs, p)
        out["mean_ms"] = statistics.fmean(xs)
        if all(r.get("ttfb_samples_ms") for r in rounds):
            ts = [x for r in rounds for x in r["ttfb_samples_ms"]]
            out["ttfb_p50_ms"], out["ttfb_p99_ms"] = _pct(ts, 50), _pct(ts, 99)
    return out


def combine_rounds(rounds: list[dict[str, Any]], cpu_s: float | None) -> dict[str, Any]:
    """One result from a target's interleaved rounds: totals for counts and req/s, and the
    latency percentiles of all its requests pooled (the median round's where a round has no
    raw latencies). `per_round` keeps each round's own rate and percentiles."""
    if len(rounds) == 1:
        res = {k: v for k, v in rounds[0].items() if k not in _RAW_KEYS}
    else:
        res = {"tool": rounds[0]["tool"], "rounds": len(rounds)}
        res["requests"] = sum(r["requests"] for r in rounds)
        res["errors"] = sum(r["errors"] for r in rounds)
        res["seconds"] = round(sum(r["seconds"] for r in rounds), 3)
        res["rps"] = res["requests"] / res["seconds"] if res["seconds"] > 0 else 0.0
        pooled = pooled_latencies(rounds)
        res["latency_from"] = "pooled" if pooled else "median round"
        for k in _MEDIAN_KEYS:
            if k in pooled:
                res[k] = pooled[k]
            elif all(k in r for r in rounds):
                res[k] = statistics.median(r[k] for r in rounds)
        if "max_ms" in pooled:
            res["max_ms"] = pooled["max_ms"]
        res["per_round"] = [
            {k: r[k] for k in ("rps", "p50_ms", "p99_ms", "ttfb_p50_ms") if k in r} for r in rounds
        ]
    if cpu_s is not None and res["requests"]:
        # measured runs only (the warm-ups ran outside the CPU readings)
        res["cpu_us_per_req"] = cpu_s / res["requests"] * 1e6
    return res


def run_matrix(run: Run) -> None:
    """For each scenario, every target against the same fake upstream process, in
    `run.rounds` interleaved rounds (direct, tollgate..., then again in a rotated order), so
    that a burst from another tenant of this shared machine lands on all of them alike."""
    fakes: dict[float, FakeUpstream] = {}
    try:
        for sc in run.scenarios:
            if sc.latency_ms not in fakes:
                fakes[sc.latency_ms] = PinnedFake(
                    name="bench", latency_ms=sc.latency_ms, chunks=sc.chunks, completion_tokens=32
                ).start()
            fu = fakes[sc.latency_ms]
            run.results.setdefault(sc.key, {})
            live: list[tuple[Target, str, int]] = []
            try:
                for t in run.targets:
                    if t.name in run.unavailable:
                        continue
                    try:
                        host, port = t.start(fu)
                    except TargetUnavailable as e:
                        run.unavailable[t.name] = str(e)
                        log(f"  {t.name}: NOT AVAILABLE: {e}")
                        continue
                    live.append((t, host, port))
                n = max(1, run.rounds)
                part = replace(
                    sc,
                    requests=sc.requests // n if sc.requests else None,
                    duration_s=sc.duration_s / n,
                )
                rounds: dict[str, list[dict[str, Any]]] = {t.name: [] for t, _, _ in live}
                cpu: dict[str, float | None] = {t.name: 0.0 for t, _, _ in live}
                failed: dict[str, str] = {}
                for i in range(n):
                    order = live[i % len(live) :] + live[: i % len(live)] if live else []
                    for t, host, port in order:
                        if t.name in failed:
                            continue
                        log(f"scenario {sc.key} ({sc.title}) -> {t.name}, round {i + 1}/{n}")
                        try:
                            warm = None if i == 0 else (0.1 if run.quick else 0.5)
                            c0, st0 = proc_cpu_s(t.pid), steal_ms()
                            res = measure(
                                part, host, port, t.model, run.quick, warm, t.seeded, t.api
                            )
                            c1, st1 = proc_cpu_s(t.pid), steal_ms()
                        except Exception as e:
                            failed[t.name] = f"{type(e).__name__}: {e}"
                            continue
                        rounds[t.name].append(res)
                        stolen = run.steal.setdefault(sc.key, {})
                        stolen[t.name] = stolen.get(t.name, 0.0) + sum(
                            st1.get(c, 0.0) - st0.get(c, 0.0) for c in (GW_CORE, LOAD_CORE)
                        )
                        prev = cpu[t.name]
                        cpu[t.name] = (
                            None if prev is None or c0 is None or c1 is None else prev + c1 - c0
                        )
                        log("  " + summarize(res))
                for t, host, port in live:
                    if t.name in failed:
                        run.results[sc.key][t.name] = {"failed": failed[t.name]}
                        continue
                    res = combine_rounds(rounds[t.name], cpu[t.name])
                    if t.pid is not None:
                        res["rss_mib"] = rss_mib(t.pid)
                    if isinstance(t, Tollgate):
                        res["gateway"] = gateway_counts((host, port))
                        if res["gateway"] is not None:
                            res["gateway"]["store"] = t.store
                    run.results[sc.key][t.name] = res
            finally:
                for t, _, _ in live:
                    t.stop()
    finally:
        for fu in fakes.values():
            fu.close()


def summarize(res: dict[str, Any]) -> str:
    if "failed" in res:
        return "FAILED " + res["failed"]
    s = (
        f"{res['requests']} req, {res['errors']} err, {res['rps']:.0f} req/s, "
        f"p50 {res['p50_ms']:.3f} ms, p99 {res['p99_ms']:.3f} ms"
    )
    if "ttfb_p50_ms" in res:
        s += f", ttfb p50 {res['ttfb_p50_ms']:.3f} ms"
    if res.get("cpu_us_per_req"):
        s += f", cpu {res['cpu_us_per_req']:.0f} us/req"
    return s


# --------------------------------------------------------------------------------------------
# reporting
# --------------------------------------------------------------------------------------------


def f3(x: Any) -> str:
    return "-" if x is None or x != x else f"{x:.3f}"


def f1(x: Any) -> str:
    return "-" if x is None or x != x else f"{x:.1f}"


def f0(x: Any) -> str:
    return "-" if x is None or x != x else f"{x:,.0f}"


def tables(run: Run, baseline: str = "direct") -> list[str]:
    """Markdown tables, one per scenario; deltas and ratios are against `baseline`."""
    out: list[str] = []
    for sc in run.scenarios:
        rows = run.results.get(sc.key, {})
        base = rows.get(baseline, {})
        what = f"{sc.requests:,} requests" if sc.requests else f"{sc.duration_s:g} s"
        out.append(f"**({sc.key}) {sc.title}**, {what}\n")
        if sc.key == "a":
            out.append(
                "| target | req/s | p50 ms | p99 ms | added p50 ms | added p99 ms | "
                "gateway CPU µs/req | errors |"
            )
            out.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        elif sc.stream:
            out.append(
                "| target | req/s | ratio to direct | TTFB p50 ms | TTFB p99 ms | total p50 ms | "
                "total p99 ms | added TTFB p50 ms | gateway CPU µs/req | errors |"
            )
            out.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        else:
            out.append(
                "| target | req/s | ratio to direct | p50 ms | p99 ms | p99 minus direct ms | "
                "gateway CPU µs/req | errors |"
            )
            out.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for t in run.targets:
            if t.name in run.unavailable and t.name not in rows:
                out.append(f"| {t.name} | not available (see below) |")
                continue
            r = rows.get(t.name)
            if r is None:
                continue
            if "failed" in r:
                out.append(f"| {t.name} | failed: {r['failed'][:120]} |")
                continue
            cpu = f0(r.get("cpu_us_per_req"))
            ratio = r["rps"] / base["rps"] if base.get("rps") else None
            if sc.key == "a":
                d50 = r["p50_ms"] - base["p50_ms"] if base else None
                d99 = r["p99_ms"] - base["p99_ms"] if base else None
                out.append(
                    f"| {t.name} | {f0(r['rps'])} | {f3(r['p50_ms'])} | {f3(r['p99_ms'])} | "
                    f"{f3(d50) if t.name != baseline else '-'} | "
                    f"{f3(d99) if t.name != baseline else '-'} | {cpu} | {r['errors']} |"
                )
            elif sc.stream:
                dt50 = r["ttfb_p50_ms"] - base["ttfb_p50_ms"] if base else None
                out.append(
                    f"| {t.name} | {f0(r['rps'])} | {f3(ratio)} | {f3(r['ttfb_p50_ms'])} | "
                    f"{f3(r['ttfb_p99_ms'])} | {f3(r['p50_ms'])} | {f3(r['p99_ms'])} | "
                    f"{f3(dt50) if t.name != baseline else '-'} | {cpu} | {r['errors']} |"
                )
            else:
                d99 = r["p99_ms"] - base["p99_ms"] if base else None
                out.append(
                    f"| {t.name} | {f0(r['rps'])} | {f3(ratio)} | {f3(r['p50_ms'])} | "
                    f"{f3(r['p99_ms'])} | {f3(d99) if t.name != baseline else '-'} | {cpu} | "
                    f"{r['errors']} |"
                )
        per_round = [
            (name, [x["p99_ms"] for x in r["per_round"]])
            for name, r in rows.items()
            if len(r.get("per_round", ())) > 1
        ]
        if per_round:
            out.append(
                "\nEach round's own p99 (ms), in the order run (the table pools them): "
                + "; ".join(f"{name} {' / '.join(f1(x) for x in xs)}" for name, xs in per_round)
            )
        seen = [(name, r["gateway"]) for name, r in rows.items() if r.get("gateway")]
        if seen:
            out.append(
                "\nThe gateway's own measure of what it added (latency minus upstream time, "
                "`tollgate_gateway_overhead_seconds`, all its requests): "
                + "; ".join(f"{name} {overhead_shares(c['overhead_le'])}" for name, c in seen)
            )
        lagged = [(name, c) for name, c in seen if c["lag_le"].get("+Inf")]
        if lagged:
            out.append(
                "\nHow late the gateway's event loop ran (`tollgate_event_loop_lag_seconds`: a "
                "100 ms timer's lateness, sampled ten times a second over the gateway's whole "
                "life in this scenario, idle time between its rounds included): "
                + "; ".join(f"{name} {late_counts(c['lag_le'])}" for name, c in lagged)
            )
        kept = [(name, c) for name, c in seen if c["store"] != "none"]
        if kept:
            out.append(
                "\nRecords the store's buffer dropped (from each gateway's /metrics after its "
                "last round; warm-ups and probes included): "
                + ", ".join(
                    f"{name} {c['dropped']:,} of {c['requests']:,}"
                    + (f" ({c['buffered']:,} still buffered)" if c["buffered"] else "")
                    for name, c in kept
                )
            )
        stolen = run.steal.get(sc.key)
        if stolen:
            out.append(
                "\nTime the hypervisor took from the two cores while each target was measured "
                "(/proc/stat steal, 10 ms ticks, warm-ups included): "
                + ", ".join(f"{name} {ms:.0f} ms" for name, ms in stolen.items())
            )
        out.append("")
    if run.unavailable:
        out.append("Not available in this run:\n")
        for name, why in run.unavailable.items():
            out.append(f"- `{name}`: {why[:600]}")
        out.append("")
    return out


def verdicts(run: Run, target: str) -> list[tuple[str, str, str]]:
    """(target, measured, met/missed) for the issue's targets (a), (b), (d)."""
    out: list[tuple[str, str, str]] = []
    R = run.results

    def get(sc: str, name: str) -> dict[str, Any] | None:
        r = R.get(sc, {}).get(name)
        return r if r and "failed" not in r else None

    d, g = get("a", "direct"), get("a", target)
    if d and g:
        a50, a99 = g["p50_ms"] - d["p50_ms"], g["p99_ms"] - d["p99_ms"]
        ok = a50 <= 0.5 and a99 <= 2.0
        out.append(
            (
                "(a) added p50 <= 0.5 ms, p99 <= 2 ms",
                f"added p50 {a50:.3f} ms, p99 {a99:.3f} ms",
                "met" if ok else "MISSED",
            )
        )
    d, g = get("b", "direct"), get("b", target)
    if d and g:
        ratio, dp99 = g["rps"] / d["rps"], g["p99_ms"] - d["p99_ms"]
        ok = ratio >= 0.95 and dp99 <= 5.0
        out.append(
            (
                ">= 95% of direct req/s, p99 within 5 ms",
                f"{ratio * 100:.1f}% ({g['rps']:.0f} vs {d['rps']:.0f} req/s), p99 {dp99:+.2f} ms",
                "met" if ok else "MISSED",
            )
        )
        out[-1] = ("(b) " + out[-1][0], out[-1][1], out[-1][2])
    d, g = get("d", "direct"), get("d", target)
    if d and g:
        dt50, ratio = g["ttfb_p50_ms"] - d["ttfb_p50_ms"], g["rps"] / d["rps"]
        ok = dt50 <= 1.0 and ratio >= 0.5
        out.append(
            (
                "(d) added TTFB p50 <= 1 ms, streamed req/s >= 50% of direct",
                f"added TTFB p50 {dt50:.3f} ms, {ratio * 100:.1f}% of direct req/s",
                "met" if ok else "MISSED",
            )
        )
    return out


PROFILE_HEAD = "### Where the time goes (py-spy, scenario c)"
CLIENT_HEAD = "### Upstream HTTP client cost (bench/client_micro.py)"
HISTORY_HEAD = "### Earlier runs"


def _section_bounds(lines: list[str], head: str) -> tuple[int, int] | None:
    start = next((i for i, ln in enumerate(lines) if ln.strip() == head), None)
    if start is None:
        return None
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return start, end


def _write(path: Path, lines: list[str]) -> None:
    if not any(ln.startswith("# ") for ln in lines):
        lines = [*INTRO.rstrip("\n").splitlines(), "", *lines]
    out = "\n".join(lines).rstrip("\n") + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(out)
    os.replace(tmp, path)


def update_section(
    title: str,
    body: str,
    path: Path = BENCHMARKS,
    keep: Sequence[str] = (PROFILE_HEAD, CLIENT_HEAD, HISTORY_HEAD),
) -> None:
    """Replace `## title` (up to the next `## `) in bench/results/latest.md, or append it.

    Subsections named in `keep` (written by other scripts) survive the rewrite.
    """
    lines = (path.read_text() if path.exists() else INTRO).splitlines()
    head = f"## {title}"
    new = [head, "", *body.rstrip("\n").splitlines(), ""]
    b = _section_bounds(lines, head)
    if b is None:
        while lines and not lines[-1].strip():
            lines.pop()
        lines += ["", *new]
    else:
        start, end = b
        old = lines[start:end]
        for sub in keep:
            if sub in new:
                continue
            i = next((k for k, ln in enumerate(old) if ln.strip() == sub), None)
            if i is not None:
                j = next((k for k in range(i + 1, len(old)) if old[k].startswith("### ")), len(old))
                new += old[i:j]
        lines[start:end] = new
    _write(path, lines)


def update_subsection(section: str, sub: str, body: str, path: Path = BENCHMARKS) -> None:
    """Replace (or add at the end of `## section`) the subsection headed `sub`."""
    lines = (path.read_text() if path.exists() else INTRO).splitlines()
    b = _section_bounds(lines, f"## {section}")
    if b is None:
        while lines and not lines[-1].strip():
            lines.pop()
        lines += ["", f"## {section}", ""]
        b = (len(lines) - 3, len(lines))
    start, end = b
    new = [sub, "", *body.rstrip("\n").splitlines(), ""]
    i = next((k for k in range(start, end) if lines[k].strip() == sub), None)
    if i is None:
        lines[end:end] = new if end == len(lines) or not lines[end - 1].strip() else ["", *new]
    else:
        j = next((k for k in range(i + 1, end) if lines[k].startswith("### ")), end)
        lines[i:j] = new
    _write(path, lines)


def header_lines(command: str, rounds: int = 1) -> list[str]:
    pin = (
        "gateway pinned to core 0 (`taskset -c 0`, one uvicorn worker via `tollgate serve`); "
        "fake upstream (`tests/fake_upstream.py`), load generator and harness "
        "pinned to core 1"
        if can_pin()
        else "NOT pinned (fewer than 2 cores or no taskset): numbers mix gateway and load"
    )
    return [
        f"- command: `{command}`",
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- git commit: `{git_commit()}`",
        f"- machine: {machine_line()} (shared, noisy: expect a few % run-to-run spread)",
        f"- layout: {pin}",
        "- load: "
        + (
            "Debian `wrk` 4.1 (`-t1 --latency`, Lua `done()` → JSON percentiles) for (a)(b)(c); "
            if have_wrk()
            else "asyncio client for all (wrk was not installed); "
        )
        + "asyncio client (raw streams, keep-alive, uvloop) for (d); TTFB = first SSE byte",
        "- request: one-message chat completion, `max_tokens` 32; fake answers 32 tokens; "
        "every request carries a gateway key that Tollgate checks (`auth.keys`); "
        "`gateway CPU µs/req` = the gateway process's CPU time over the measured window / "
        "requests",
        (
            f"- rounds: each scenario runs in {rounds} interleaved rounds (every target for "
            "1/{n} of the requests or time, then again in a rotated order); req/s and CPU are "
            "totals; latency percentiles are over all of a target's requests, its rounds "
            "pooled (wrk's exact histograms); `direct again` is the upstream measured a "
            "second time, so its distance from `direct` is the measure's own noise".replace(
                "{n}", str(rounds)
            )
            if rounds > 1
            else "- rounds: 1 (every target once, back to back)"
        ),
    ]


def save_json(run: Run, name: str, extra: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(exist_ok=True)
    p = RESULTS_DIR / f"{name}.json"
    p.write_text(
        json.dumps(
            {
                "results": run.results,
                "unavailable": run.unavailable,
                "scenarios": [s.__dict__ for s in run.scenarios],
                "quick": run.quick,
                **extra,
            },
            indent=2,
        )
    )
    return p


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def parse_list(value: str, allowed: Sequence[str], what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise SystemExit(f"--{what}: expected a comma list of {', '.join(allowed)}, got {value!r}")
    return items


def journal_arg(p: argparse.ArgumentParser) -> None:
    """--journal, shared with bench/instructions.py."""
    p.add_argument(
        "--journal",
        default="on",
        help="on|off (comma list for both): the SQLite store's record journal (store.journal)",
    )


def common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="3 s runs and 300 requests (smoke)")
    p.add_argument("--scenarios", default="a,b,c,d", help="comma list of a,b,c,d")
    p.add_argument("--no-write", action="store_true", help="do not write bench/results/latest.md")
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="interleaved rounds per scenario (default 4, 1 with --quick); each round runs "
        "every target for 1/rounds of the requests or time",
    )


def rounds_of(args: argparse.Namespace) -> int:
    return args.rounds if args.rounds is not None else (1 if args.quick else 4)


def setup_pinning() -> None:
    if not can_pin():
        log("WARNING: fewer than 2 cores or no taskset: running unpinned")
        return
    os.sched_setaffinity(0, {int(LOAD_CORE)})  # the harness and its asyncio client
    if not have_wrk():
        log(
            "wrk not found (Debian: apt-get update && apt-get install -y wrk): "
            "using the asyncio client for the non-streamed scenarios too"
        )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    common_args(p)
    p.add_argument("--modes", default="pinned,auto", help="comma list of pinned,auto")
    p.add_argument("--store", default="none,sqlite", help="none|sqlite (comma list for both)")
    journal_arg(p)
    p.add_argument(
        "--limits",
        default="off",
        help="off|local|redis (comma list): the bench key with an rpm, a tpm and a budget it "
        "never reaches, counted in limits.backend local (a shared file) or redis (a private "
        "redis-server)",
    )
    p.add_argument(
        "--cache",
        default="",
        help="comma list of off,miss,hit: one pinned Tollgate per item, its requests seeded "
        "(deterministic) and each new (off, miss: the response cache off / on and missing) or "
        "all the same (hit: served from the cache); replaces the --modes/--store targets",
    )
    p.add_argument(
        "--api",
        default="chat",
        help="comma list of chat,messages,responses: each Tollgate target once per client API "
        "(messages: /v1/messages, responses: /v1/responses, each translated to chat for the "
        "same fake upstream)",
    )
    p.add_argument(
        "--no-control",
        action="store_true",
        help=f"leave out the target {CONTROL!r} (the upstream measured twice)",
    )
    args = p.parse_args(argv)
    keys = parse_list(args.scenarios, "abcd", "scenarios")
    modes = parse_list(args.modes, ("pinned", "auto"), "modes")
    stores = parse_list(args.store, ("none", "sqlite"), "store")
    journals = parse_list(args.journal, ("on", "off"), "journal")
    limit_modes = parse_list(args.limits, ("off", "local", "redis"), "limits")
    setup_pinning()
    all_sc = make_scenarios(args.quick)
    targets: list[Target] = [Direct()]
    if not args.no_control:
        targets.append(Direct(CONTROL))
    if args.cache:
        caches = parse_list(args.cache, ("off", "miss", "hit"), "cache")
        for t in targets:
            t.seeded = NEW_SEED  # the same requests as `off` and `miss`
        targets += [Tollgate(store=stores[0], cache=c) for c in caches]
    else:
        apis = parse_list(args.api, tuple(APIS), "api")
        targets += [
            Tollgate(store=s, mode=m, journal=j == "on", limits=lim, api=a)
            for a in apis
            for m in modes
            for s in stores
            for j in (journals if s == "sqlite" else ["on"])
            for lim in limit_modes
        ]
    run = Run([all_sc[k] for k in keys], targets, args.quick, rounds_of(args))
    t0 = time.monotonic()
    load0 = loadavg()
    run_matrix(run)
    load1 = loadavg()
    elapsed = time.monotonic() - t0
    command = "make bench  # = .venv/bin/python bench/overhead.py " + " ".join(
        a for a in (argv if argv is not None else sys.argv[1:])
    )
    lines = header_lines(command.strip(), run.rounds)
    lines.append(
        f"- wall time of the whole run: {elapsed:.0f} s; load average (1/5/15 min) "
        f"{load0} at the start, {load1} at the end (other tenants share both cores)"
    )
    lines.append("")
    lines += tables(run)
    main_target = next(
        (t.name for t in targets if isinstance(t, Tollgate) and t.name not in run.unavailable),
        None,
    )
    if main_target:
        lines.append("Targets from the issue, for each Tollgate configuration:\n")
        lines.append("| target | measured | verdict |")
        lines.append("| --- | --- | --- |")
        for tgt in [t for t in targets if isinstance(t, Tollgate)]:
            for what, got, ok in verdicts(run, tgt.name):
                lines.append(f"| {what} [{tgt.name}] | {got} | {ok} |")
        if any(t.name == CONTROL for t in targets):
            for what, got, _ in verdicts(run, CONTROL):
                lines.append(f"| {what} [{CONTROL}: the measure's own noise] | {got} | - |")
        lines.append("| (c) >= 20x LiteLLM's req/s on the same core | see *Peer: LiteLLM* | - |")
        lines.append("")
    body = "\n".join(lines)
    print("\n" + body)
    save_json(run, "overhead-quick" if args.quick else "overhead", {"command": command})
    if not args.no_write:
        update_section("Gateway overhead", body)
        log(f"updated {BENCHMARKS.name}: section 'Gateway overhead'")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Drive one OpenAI-compatible endpoint at increasing concurrency and measure what it serves.

Each level sends `requests` streamed chat completions with `concurrency` of them in flight at
a time (closed loop: a stream that ends starts the next), and measures over the level's wall
time, from its first request sent to its last byte received:

- aggregate output tokens/s: the sum of every answer's completion tokens / the wall time;
- per-stream tokens/s: each answer's completion tokens / its own time after its first token
  (median over the level's answers);
- TTFT: time to the first content token of each stream; per-token latency: (total - TTFT) /
  (completion tokens - 1) of each stream; p50/p90/p99 over the level's answers;
- errors: answers that were not a 200 stream ending in [DONE] (status, cut, timeout).

Completion tokens are the server's own usage (stream_options.include_usage); when a server
sends none, the content chunks are counted (`tokens_counted`). llama.cpp's own
`timings.predicted_n`, when the server sends it, is kept beside it (`server_predicted`).

The saturation point is the lowest concurrency whose aggregate throughput reaches
SATURATION_SHARE of the best level's; its throughput is the box's `tokens_per_second`.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

SATURATION_SHARE = 0.95


@dataclass(frozen=True, slots=True)
class Target:
    """One endpoint to measure: its base URL (…/v1), the model name it is sent, a key."""

    label: str
    base_url: str
    model: str
    api_key: str | None = None
    usd_per_hour: float | None = None
    input_ratio: float = 0.1


@dataclass(frozen=True, slots=True)
class Prompt:
    text: str
    answer: str | None = None  # the reference answer of a scored task
    kind: str = ""


@dataclass(slots=True)
class Answer:
    ok: bool
    start: float
    end: float
    ttft_s: float | None = None
    completion_tokens: int = 0
    prompt_tokens: int = 0
    server_predicted: int | None = None
    counted: bool = False  # tokens counted from chunks (the server sent no usage)
    text: str = ""
    error: str = ""
    prompt: Prompt | None = None

    @property
    def total_s(self) -> float:
        return self.end - self.start

    @property
    def per_token_s(self) -> float | None:
        if self.ttft_s is None or self.completion_tokens < 2:
            return None
        return (self.total_s - self.ttft_s) / (self.completion_tokens - 1)

    @property
    def stream_tps(self) -> float | None:
        if self.ttft_s is None or self.completion_tokens < 2:
            return None
        decode = self.total_s - self.ttft_s
        return (self.completion_tokens - 1) / decode if decode > 0 else None


@dataclass(slots=True)
class Level:
    concurrency: int
    wall_s: float
    answers: list[Answer] = field(default_factory=list)

    @property
    def ok(self) -> list[Answer]:
        return [a for a in self.answers if a.ok]

    @property
    def errors(self) -> int:
        return sum(1 for a in self.answers if not a.ok)

    @property
    def completion_tokens(self) -> int:
        return sum(a.completion_tokens for a in self.ok)

    @property
    def prompt_tokens(self) -> int:
        return sum(a.prompt_tokens for a in self.ok)

    @property
    def aggregate_tps(self) -> float:
        return self.completion_tokens / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def server_predicted(self) -> int | None:
        """The sum of the server's own timings.predicted_n, when every answer had one."""
        got = [a.server_predicted for a in self.ok]
        if not got or any(g is None for g in got):
            return None
        return sum(g for g in got if g is not None)

    def summary(self) -> dict[str, Any]:
        ok = self.ok
        ttft = sorted(a.ttft_s for a in ok if a.ttft_s is not None)
        itl = sorted(x for a in ok if (x := a.per_token_s) is not None)
        stream = sorted(x for a in ok if (x := a.stream_tps) is not None)
        return {
            "concurrency": self.concurrency,
            "requests": len(self.answers),
            "errors": self.errors,
            "wall_s": self.wall_s,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "server_predicted_n": self.server_predicted,
            "tokens_counted": any(a.counted for a in ok),
            "aggregate_tps": self.aggregate_tps,
            "stream_tps_p50": percentile(stream, 50),
            "ttft_ms": {f"p{q}": _ms(percentile(ttft, q)) for q in (50, 90, 99)},
            "per_token_ms": {f"p{q}": _ms(percentile(itl, q)) for q in (50, 90, 99)},
        }


def _ms(v: float | None) -> float | None:
    return None if v is None else v * 1000.0


def percentile(xs: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of sorted `xs` (None for none)."""
    if not xs:
        return None
    k = max(0, min(len(xs) - 1, math.ceil(q / 100.0 * len(xs)) - 1))
    return xs[k]


def levels_up_to(top: int) -> list[int]:
    """1, 2, 4, ... and `top` itself."""
    out = [c for c in (2**i for i in range(32)) if c < top]
    return [*out, top]


def saturation(levels: Sequence[Level]) -> Level | None:
    """The lowest concurrency whose aggregate throughput reaches SATURATION_SHARE of the
    best level's (None when no level served a token)."""
    best = max((lv.aggregate_tps for lv in levels), default=0.0)
    if best <= 0:
        return None
    return next(lv for lv in levels if lv.aggregate_tps >= SATURATION_SHARE * best)


def usd_per_mtok(target: Target, tps: float) -> tuple[float, float] | None:
    """(input, output) USD per million tokens at `tps` output tokens/s and the target's
    hourly price (gateway/accounting/pricing.py's local formula)."""
    if target.usd_per_hour is None or tps <= 0:
        return None
    from gateway.accounting.pricing import rates
    from gateway.config import Pricing

    local = Pricing(
        hardware_usd_per_hour=target.usd_per_hour,
        tokens_per_second=tps,
        input_ratio=target.input_ratio,
    )
    r = rates(local)
    return r.input * 1e6, r.output * 1e6


class Progress:
    """A one-line progress bar on stderr (redrawn in place on a terminal; otherwise one
    line per level)."""

    def __init__(self, total: int, stream: Any = None) -> None:
        self.total = max(1, total)
        self.done = 0
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.label = ""

    def step(self, label: str, n: int = 1) -> None:
        self.done += n
        self.label = label
        if self.tty:
            width = 30
            filled = round(width * self.done / self.total)
            bar = "#" * filled + "-" * (width - filled)
            self.stream.write(f"\r[{bar}] {self.done}/{self.total} {label}\033[K")
            self.stream.flush()

    def line(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\033[K")
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()


async def stream_once(
    client: httpx.AsyncClient,
    target: Target,
    prompt: Prompt,
    max_tokens: int,
    temperature: float,
) -> Answer:
    body = {
        "model": target.model,
        "messages": [{"role": "user", "content": prompt.text}],
        "max_tokens": max_tokens,
        "temperature": temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = {"authorization": f"Bearer {target.api_key}"} if target.api_key else {}
    t0 = time.perf_counter()
    ans = Answer(ok=False, start=t0, end=t0, prompt=prompt)
    parts: list[str] = []
    chunks = 0
    done = False
    try:
        async with client.stream(
            "POST", f"{target.base_url}/chat/completions", json=body, headers=headers
        ) as r:
            if r.status_code != 200:
                await r.aread()
                ans.error = f"HTTP {r.status_code}"
                ans.end = time.perf_counter()
                return ans
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                ev = orjson.loads(data)
                for ch in ev.get("choices") or ():
                    text = (ch.get("delta") or {}).get("content")
                    if text:
                        if ans.ttft_s is None:
                            ans.ttft_s = time.perf_counter() - t0
                        parts.append(text)
                        chunks += 1
                usage = ev.get("usage")
                if isinstance(usage, dict):
                    ans.completion_tokens = int(usage.get("completion_tokens") or 0)
                    ans.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                timings = ev.get("timings")
                if isinstance(timings, dict) and "predicted_n" in timings:
                    ans.server_predicted = int(timings["predicted_n"])
    except (httpx.HTTPError, orjson.JSONDecodeError, ValueError) as e:
        ans.error = type(e).__name__
        ans.end = time.perf_counter()
        return ans
    ans.end = time.perf_counter()
    ans.text = "".join(parts)
    if not done:
        ans.error = "stream ended without [DONE]"
        return ans
    if ans.completion_tokens == 0 and chunks:
        ans.completion_tokens, ans.counted = chunks, True
    ans.ok = True
    return ans


async def run_level(
    client: httpx.AsyncClient,
    target: Target,
    prompts: Sequence[Prompt],
    concurrency: int,
    requests: int,
    max_tokens: int,
    temperature: float,
    on_answer: Callable[[Answer], None] | None = None,
) -> Level:
    """`requests` streams, `concurrency` at a time, prompts taken in turn."""
    feed = itertools.islice(itertools.cycle(prompts), requests)
    answers: list[Answer] = []

    async def worker() -> None:
        for p in feed:  # shared iterator: each prompt goes to one worker
            a = await stream_once(client, target, p, max_tokens, temperature)
            answers.append(a)
            if on_answer is not None:
                on_answer(a)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = max((a.end for a in answers), default=t0) - t0
    return Level(concurrency, wall, answers)


async def measure(
    target: Target,
    prompts: Sequence[Prompt],
    levels: Sequence[int],
    requests_per_stream: int,
    max_tokens: int,
    temperature: float = 0.0,
    timeout_s: float = 300.0,
    progress: Progress | None = None,
    warmup: int = 1,
) -> list[Level]:
    """Every level in turn against one target, after `warmup` unmeasured requests."""
    top = max(levels)
    limits = httpx.Limits(max_connections=top, max_keepalive_connections=top)
    out: list[Level] = []
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        for p in prompts[:warmup]:
            await stream_once(client, target, p, max_tokens, temperature)
        for c in levels:
            n = c * requests_per_stream

            def tick(_a: Answer, c: int = c) -> None:
                if progress is not None:
                    progress.step(f"{target.label}: concurrency {c}")

            lv = await run_level(client, target, prompts, c, n, max_tokens, temperature, tick)
            out.append(lv)
            if progress is not None:
                progress.line(
                    f"{target.label}: concurrency {c}: {lv.aggregate_tps:,.1f} tokens/s, "
                    f"{lv.errors} errors"
                )
    return out

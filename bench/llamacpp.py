"""Gateway overhead in front of a real llama.cpp server (Gemma 3 270M), against direct calls.

    scripts/local-model install
    .venv/bin/python bench/llamacpp.py [--n 30] [--max-tokens 32] [--no-write]

Starts llama-server (scripts/local-model start) and the gateway on the example config,
then alternates direct and through-gateway streamed requests (same prompt, temperature 0)
so both see the same machine noise. Reports time to first token and total time, p50/p90,
and writes them into the "Local model (llama.cpp)" section of bench/results/latest.md.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.overhead import update_section  # noqa: E402
from tests.support import GatewayProcess, free_port  # noqa: E402

SCRIPT = REPO / "scripts" / "local-model"
SECTION = "Local model (llama.cpp)"


def stream_once(client: httpx.Client, url: str, model: str, max_tokens: int) -> tuple[float, float]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Write one sentence about the sea."}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    t0 = time.perf_counter()
    ttft = None
    with client.stream("POST", url, json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if ttft is None and line.startswith("data: {") and '"content":"' in line:
                ttft = time.perf_counter() - t0
    total = time.perf_counter() - t0
    return (ttft if ttft is not None else total), total


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    port = free_port()
    r = subprocess.run([str(SCRIPT), "start", "--port", str(port)], capture_output=True, text=True)
    if r.returncode != 0:
        print(r.stdout + r.stderr, file=sys.stderr)
        return 1
    direct_url = f"http://127.0.0.1:{port}/v1/chat/completions"
    cfg = (REPO / "config" / "examples" / "local-llamacpp.yaml").read_text()
    cfg = cfg.replace("${TOLLGATE_LLAMACPP_URL:-http://127.0.0.1:8089/v1}", direct_url[:-17])
    try:
        with (
            tempfile.TemporaryDirectory() as tmp,
            GatewayProcess(cfg, Path(tmp)) as gw,
            httpx.Client(timeout=120) as c,
        ):
            gw_url = f"{gw.base_url}/chat/completions"
            for _ in range(3):  # warm both paths and llama's prompt cache
                stream_once(c, direct_url, "x", args.max_tokens)
                stream_once(c, gw_url, "gemma-local", args.max_tokens)
            d_ttft, d_tot, g_ttft, g_tot = [], [], [], []
            for _ in range(args.n):
                a, b = stream_once(c, direct_url, "x", args.max_tokens)
                d_ttft.append(a)
                d_tot.append(b)
                a, b = stream_once(c, gw_url, "gemma-local", args.max_tokens)
                g_ttft.append(a)
                g_tot.append(b)
    finally:
        subprocess.run([str(SCRIPT), "stop"], capture_output=True)
    rows = [
        ("direct", d_ttft, d_tot),
        ("through tollgate", g_ttft, g_tot),
    ]
    lines = [
        f"- command: `.venv/bin/python bench/llamacpp.py --n {args.n} "
        f"--max-tokens {args.max_tokens}`",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"git `{_git()}`; 2-core shared machine, nothing pinned",
        "- llama-server (Gemma 3 270M Q4_K_M, `--threads 1 --parallel 2`), streamed chat, "
        f"temperature 0, {args.max_tokens} tokens; direct and gateway requests alternate",
        "",
        "| path | TTFT p50 ms | TTFT p90 ms | total p50 ms | total p90 ms |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, t, tot in rows:
        lines.append(
            f"| {name} | {pct(t, 0.5):.1f} | {pct(t, 0.9):.1f} | "
            f"{pct(tot, 0.5):.1f} | {pct(tot, 0.9):.1f} |"
        )
    added_ttft = statistics.median(g_ttft) * 1000 - statistics.median(d_ttft) * 1000
    added_tot = statistics.median(g_tot) * 1000 - statistics.median(d_tot) * 1000
    lines += [
        "",
        f"Added by the gateway (p50): time to first token {added_ttft:+.1f} ms, total "
        f"{added_tot:+.1f} ms, against the model's own {statistics.median(d_tot) * 1000:.0f} ms.",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        update_section(SECTION, text)
    return 0


def _git() -> str:
    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() or "unknown"


if __name__ == "__main__":
    raise SystemExit(main())

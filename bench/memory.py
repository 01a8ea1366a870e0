"""Memory: 100,000 requests through the gateway on loopback, the gateway's RSS every 10,000.

    .venv/bin/python bench/memory.py [--requests 100000] [--every 10000] [--store sqlite]
        [--mode auto|pinned]

Same layout as bench/overhead.py (gateway on core 0, fake upstream and wrk on core 1).
The load is wrk at concurrency 32, in batches of `--every` requests; after each batch the
gateway's VmRSS is read from /proc/PID/status. Bounded: each batch stops after its request
count (or 300 s). Writes the "Memory" section of bench/results/latest.md unless --no-write.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import overhead as ov


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--requests", type=int, default=100_000)
    p.add_argument("--every", type=int, default=10_000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--store", default="sqlite", choices=["none", "sqlite"])
    p.add_argument("--stream", action="store_true", help="streamed requests (asyncio client)")
    p.add_argument(
        "--mode",
        default="auto",
        choices=["pinned", "auto"],
        help='model="auto" (router on: its C scratch tables, metric series) or a pinned model',
    )
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    ov.setup_pinning()
    fu = ov.PinnedFake(name="bench", latency_ms=0, chunks=20, completion_tokens=32).start()
    gw = ov.Tollgate(store=args.store, mode=args.mode)
    rows: list[tuple[int, float | None, float, float]] = []
    errors = 0
    counts: dict[str, object] | None = None
    t_start = time.monotonic()
    try:
        host, port = gw.start(fu)
        assert gw.pid is not None
        rows.append((0, ov.rss_mib(gw.pid), 0.0, 0.0))
        ov.log(f"gateway PID {gw.pid}: RSS after start {rows[0][1]:.1f} MiB")
        done = 0
        while done < args.requests:
            n = min(args.every, args.requests - done)
            if args.stream or not ov.have_wrk():
                res = ov.run_client(
                    host, port, gw.model, args.concurrency, 300, requests=n, stream=args.stream
                )
            else:
                res = ov.run_wrk(host, port, gw.model, args.concurrency, 300, requests=n)
            done += res["requests"]
            errors += res["errors"]
            if res["requests"] == 0:
                raise RuntimeError("a batch completed no request: " + ov.summarize(res))
            rss = ov.rss_mib(gw.pid)
            rows.append((done, rss, res["rps"], res["p99_ms"]))
            ov.log(f"{done:>7,} requests: RSS {rss:.1f} MiB ({ov.summarize(res)})")
        counts = ov.gateway_counts((host, port))
    finally:
        gw.stop()
        fu.close()
    elapsed = time.monotonic() - t_start
    base = rows[0][1] or 0.0
    lines = [
        "- command: `" + " ".join([".venv/bin/python bench/memory.py", *sys.argv[1:]]) + "`",
        f"- date: {ov.dt.datetime.now(ov.dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- git commit: `{ov.git_commit()}`",
        f"- machine: {ov.machine_line()}",
        f"- load: {args.requests:,} {'streamed' if args.stream else 'non-streamed'} chat "
        f"requests at concurrency {args.concurrency} through `tollgate serve` "
        f"(store={args.store}, {'model=auto' if args.mode == 'auto' else 'pinned model'}) "
        "to the fake upstream on loopback, "
        f"in batches of {args.every:,}; {errors} errors; {elapsed:.0f} s in all",
        "- RSS = VmRSS of the gateway process from /proc/PID/status after each batch",
        "",
        "| requests | RSS MiB | growth since start MiB | batch req/s | batch p99 ms |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for n, rss, rps, p99 in rows:
        growth = (rss - base) if rss is not None else None
        lines.append(
            f"| {n:,} | {ov.f1(rss)} | {ov.f1(growth)} | "
            f"{ov.f0(rps) if n else '-'} | {ov.f3(p99) if n else '-'} |"
        )
    if len(rows) >= 3 and rows[1][1] is not None and rows[-1][1] is not None:
        per = (rows[-1][1] - rows[1][1]) / max(1, rows[-1][0] - rows[1][0]) * 1024 * 1024
        lines.append("")
        lines.append(
            f"After the first batch (warm caches, full pools) RSS grew "
            f"{rows[-1][1] - rows[1][1]:.1f} MiB over {rows[-1][0] - rows[1][0]:,} requests "
            f"(~{per:.0f} bytes/request)."
        )
    if len(rows) >= 3 and rows[1][1] and rows[-1][1]:
        growth_pct = (rows[-1][1] - rows[1][1]) / rows[1][1] * 100
        verdict = "met" if growth_pct <= 10 else "MISSED"
        lines.append(
            f"\nTarget (RSS after {rows[-1][0]:,} within 10% of RSS after {rows[1][0]:,}): "
            f"{rows[-1][1]:.1f} vs {rows[1][1]:.1f} MiB, {growth_pct:+.1f}%: {verdict}."
        )
    if counts is not None and args.store != "none":
        # A store that drops records under load also keeps less: say how many were kept.
        lines.append(
            f"\nRecords the store's buffer dropped (the gateway's /metrics at the end): "
            f"{counts['dropped']:,} of {counts['requests']:,} requests."
        )
    body = "\n".join(lines)
    print("\n" + body)
    if not args.no_write:
        ov.update_section("Memory", body)
        ov.log("updated bench/results/latest.md: section 'Memory'")
    return 0


if __name__ == "__main__":
    sys.exit(main())

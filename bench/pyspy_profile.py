"""Profile the gateway under scenario (c) (concurrency 256, upstream latency 0) with py-spy.

    .venv/bin/pip install py-spy
    .venv/bin/python bench/pyspy_profile.py [--seconds 10] [--concurrency 256] [--store none]
        [--mode pinned|auto] [--stream]

Starts the fake upstream (core 1) and `tollgate serve` (core 0), drives it with wrk, and
samples the gateway with `py-spy record --format raw` (collapsed stacks) while the load
runs. Prints where the time goes: by package (inclusive and self), the top self-time
functions and the top inclusive functions in gateway/. The raw stacks and a speedscope
file are kept under bench/results/ for a flame graph (https://www.speedscope.app).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import overhead as ov


def classify(frame: str) -> str:
    """Map a py-spy frame 'func (path/file.py:line)' to a package bucket."""
    if frame.startswith("Runner.run ("):
        return "event loop, native (uvloop C, syscalls)"
    path = "/" + frame.rsplit("(", 1)[-1]
    for key, bucket in (
        ("/gateway/", "gateway (our code)"),
        ("/httpcore/", "httpcore"),
        ("/httpx/", "httpx"),
        ("/anyio/", "anyio"),
        ("/uvicorn/", "uvicorn"),
        ("/uvloop/", "uvloop"),
        ("/h11/", "h11"),
        ("/prometheus_client/", "prometheus_client"),
        ("/asyncio/", "asyncio stdlib"),
        ("/sniffio/", "sniffio"),
        ("/ssl.py", "ssl"),
        ("/logging/", "logging"),
        ("/starlette/", "starlette"),
        ("/fastapi/", "fastapi"),
        ("/sqlite3/", "sqlite3"),
        ("/idna/", "idna"),
    ):
        if key in path:
            return bucket
    if path.startswith(("/<", "/asyncio")):
        return "asyncio stdlib"
    if "/" not in path[1:] or path.startswith(("/contextlib", "/selectors", "/socket")):
        return "other stdlib"
    return "other"


# Named hot-path items (inclusive share of samples whose stack contains the pattern).
ITEMS = [
    ("upstream client: gateway/http/h1.py H1Pool", ("H1Pool", "gateway/http/h1.py")),
    ("upstream client: httpx/httpcore", ("httpx/", "httpcore/")),
    ("uvicorn: parse request, start ASGI task", ("HttpToolsProtocol.", "_start_asgi_task")),
    ("uvicorn: write response (send)", ("RequestResponseCycle.send",)),
    ("metrics (Metrics.*, prometheus_client)", ("Metrics.", "prometheus_client/")),
    ("after-response work (Gateway.finish/_after)", ("Gateway.finish", "Gateway._after")),
    ("asyncio.timeout per attempt", ("asyncio/timeouts.py",)),
    ("disconnect watcher task", ("_watch_disconnect",)),
    ("pricing (Gateway.price)", ("Gateway.price",)),
    ("request validation", ("validate_chat", "validate_completion")),
    ("plan resolution (Runtime.resolve)", ("Runtime.resolve",)),
    ("orjson + payload build", ("Proxy._payload", "orjson")),
]


def analyse(raw: Path, top: int = 25) -> str:
    stacks: list[tuple[list[str], int]] = []
    for line in raw.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        stack, _, n = line.rpartition(" ")
        frames = [f for f in stack.split(";") if f and not f.startswith("process ")]
        frames = [f for f in frames if not f.startswith("thread ")]
        stacks.append((frames, int(n)))
    total = sum(n for _, n in stacks) or 1
    self_fn: collections.Counter[str] = collections.Counter()
    incl_fn: collections.Counter[str] = collections.Counter()
    self_pkg: collections.Counter[str] = collections.Counter()
    incl_pkg: collections.Counter[str] = collections.Counter()
    idle = 0
    for frames, n in stacks:
        if not frames:
            continue
        leaf = frames[-1]
        if "select" in leaf and ("selectors" in leaf or "run_forever" in leaf or "epoll" in leaf):
            idle += n
        self_fn[leaf] += n
        self_pkg[classify(leaf)] += n
        for f in set(frames):
            incl_fn[f] += n
        for b in {classify(f) for f in frames}:
            incl_pkg[b] += n
    out = [f"samples: {total} (idle in the event loop's poll: {idle / total * 100:.1f}%)", ""]
    out.append("package                  self%   inclusive%")
    for b, n in self_pkg.most_common():
        out.append(f"  {b:22s} {n / total * 100:5.1f}   {incl_pkg[b] / total * 100:5.1f}")
    out.append("")
    out.append("named hot-path items (inclusive % of samples):")
    for label, pats in ITEMS:
        n = sum(c for frames, c in stacks if any(p in f for f in frames for p in pats))
        if n:
            out.append(f"  {n / total * 100:5.1f}%  {label}")
    out.append("")
    out.append(f"top {top} functions by self time:")
    for f, n in self_fn.most_common(top):
        out.append(f"  {n / total * 100:5.1f}%  {f}")
    out.append("")
    out.append(f"top {top} functions by inclusive time (gateway/, httpx, httpcore, uvicorn):")
    shown = 0
    for f, n in incl_fn.most_common():
        if classify(f) in ("gateway (our code)", "httpx", "httpcore", "uvicorn", "anyio"):
            out.append(f"  {n / total * 100:5.1f}%  {f}")
            shown += 1
            if shown >= top:
                break
    return "\n".join(out)


def pyspy_version(exe: str) -> str:
    out = subprocess.run([exe, "--version"], capture_output=True, text=True)
    return out.stdout.strip().split()[-1] if out.stdout.strip() else "?"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=256)
    p.add_argument("--store", default="none", choices=["none", "sqlite"])
    p.add_argument(
        "--latency-ms", type=float, default=0.0, help="upstream latency (50 for scenario b)"
    )
    p.add_argument("--stream", action="store_true", help="profile scenario (d) instead")
    p.add_argument(
        "--mode", default="pinned", choices=["pinned", "auto"], help="model=auto or pinned"
    )
    p.add_argument("--no-write", action="store_true", help="do not write bench/results/latest.md")
    args = p.parse_args()
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        raise SystemExit("py-spy not found: .venv/bin/pip install py-spy")
    ov.setup_pinning()
    ov.RESULTS_DIR.mkdir(exist_ok=True)
    raw = ov.RESULTS_DIR / "profile-c.raw.txt"
    speedscope = ov.RESULTS_DIR / "profile-c.speedscope.json"
    fu = ov.PinnedFake(
        name="bench", latency_ms=args.latency_ms, chunks=20, completion_tokens=32
    ).start()
    gw = ov.Tollgate(store=args.store, mode=args.mode)
    try:
        host, port = gw.start(fu)
        assert gw.pid is not None
        load_s = args.seconds + 4.0
        res: dict[str, object] = {}

        def load() -> None:
            if args.stream:
                res.update(ov.run_client(host, port, gw.model, 16, load_s, stream=True))
            else:
                res.update(ov.run_wrk(host, port, gw.model, args.concurrency, load_s))

        th = threading.Thread(target=load)
        th.start()
        import time

        time.sleep(2.0)
        for fmt, out in (("raw", raw),):
            subprocess.run(
                [
                    pyspy,
                    "record",
                    "--pid",
                    str(gw.pid),
                    "--duration",
                    str(int(args.seconds)),
                    "--rate",
                    "200",
                    "--format",
                    fmt,
                    "-o",
                    str(out),
                ],
                check=True,
                capture_output=True,
            )
        th.join()
        print("load during the profile:", ov.summarize(res))  # type: ignore[arg-type]
    finally:
        gw.stop()
        fu.close()
    report = analyse(raw, top=15)
    print(report)
    (ov.RESULTS_DIR / "profile-c.txt").write_text(report + "\n")
    if not args.no_write and not args.stream:
        cmd = " ".join([".venv/bin/python bench/pyspy_profile.py", *sys.argv[1:]])
        body = "\n".join(
            [
                f"- command: `{cmd}` (py-spy {pyspy_version(pyspy)}, 200 Hz, "
                f"{args.seconds:g} s of samples while wrk drives -c{args.concurrency})",
                f"- date: {ov.dt.datetime.now(ov.dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}, "
                f"git commit `{ov.git_commit()}`, store={args.store}",
                "- load during the profile: " + ov.summarize(res),  # type: ignore[arg-type]
                "",
                "```",
                report,
                "```",
            ]
        )
        ov.update_subsection("Gateway overhead", ov.PROFILE_HEAD, body)
        ov.log("updated bench/results/latest.md: " + ov.PROFILE_HEAD)
    print(f"\nraw stacks: {raw}  (speedscope: py-spy record --format speedscope -o {speedscope})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

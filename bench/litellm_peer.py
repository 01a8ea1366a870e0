"""Peer comparison: Tollgate vs the LiteLLM proxy on the same core, against the same fake upstream.

    .venv/bin/python bench/litellm_peer.py [--quick] [--scenarios a,b,c,d] [--no-write]
        [--mode auto|pinned] [--rounds N]

LiteLLM is never a Tollgate dependency: this script makes a throwaway venv under
bench/.litellm-venv (gitignored) and installs `litellm[proxy]==1.108.7` there. It writes a
LiteLLM config with one model (`openai/` provider, `api_base` = the fake upstream), and
starts `litellm --config ... --port P --num_workers 1` pinned with `taskset -c 0`, with no
database, a master key (sent as the bearer token), the local model cost map and telemetry
off. Then it runs the scenarios of bench/overhead.py against direct, Tollgate and LiteLLM in
one invocation and writes the "Peer: LiteLLM" section of bench/results/latest.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import overhead as ov

from tests.fake_upstream import FakeUpstream

LITELLM_VERSION = "1.108.7"
VENV = Path(__file__).resolve().parent / ".litellm-venv"


def ensure_litellm() -> tuple[Path | None, str]:
    """(path of the `litellm` executable or None, a note saying what happened)."""
    exe = VENV / "bin" / "litellm"
    py = VENV / "bin" / "python"
    if exe.exists():
        out = subprocess.run(
            [str(py), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
            capture_output=True,
            text=True,
        )
        if out.stdout.strip() == LITELLM_VERSION:
            return exe, f"litellm {LITELLM_VERSION} (already in {VENV.name})"
    ov.log(f"creating {VENV} and installing litellm[proxy]=={LITELLM_VERSION} (a few minutes)")
    base = os.environ.get("LITELLM_BASE_PYTHON") or "python3"
    steps = [
        [base, "-m", "venv", str(VENV)],
        [str(py), "-m", "pip", "install", "-q", f"litellm[proxy]=={LITELLM_VERSION}"],
    ]
    for cmd in steps:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=1500)
        if r.returncode != 0:
            tail = (r.stderr or r.stdout).strip().splitlines()[-15:]
            return None, f"`{' '.join(cmd)}` failed (exit {r.returncode}): " + " | ".join(tail)
    if not exe.exists():
        return None, f"installed, but {exe} is missing"
    return exe, f"litellm {LITELLM_VERSION} (installed now into {VENV.name})"


class LiteLLM(ov.ServerProcess):
    name = "litellm"

    def __init__(self, exe: Path) -> None:
        super().__init__()
        self.exe = exe
        self.model = "small"

    def health_path(self) -> str:
        return "/health/liveliness"

    def startup_timeout(self) -> float:
        return 120.0

    def auth_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {ov.BEARER}"}

    def command(self, upstream: FakeUpstream, tmp: Path) -> tuple[list[str], dict[str, str]]:
        cfg = tmp / "litellm.yaml"
        cfg.write_text(
            "model_list:\n"
            "  - model_name: small\n"
            "    litellm_params:\n"
            "      model: openai/gemma-2b-it\n"
            f"      api_base: {upstream.base_url}\n"
            "      api_key: sk-fake-upstream\n"
            "general_settings:\n"
            f"  master_key: {ov.BEARER}\n"
            "litellm_settings:\n"
            "  telemetry: false\n"
            "  drop_params: true\n"
        )
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.upper().endswith("_PROXY")
            and k not in ("DATABASE_URL", "DIRECT_URL", "PYTHONPATH", "VIRTUAL_ENV")
        }
        env.update(
            {
                "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the cost map at import
                "LITELLM_TELEMETRY": "False",
                "LITELLM_MODE": "PRODUCTION",  # no .env loading
                "LITELLM_DONT_SHOW_FEEDBACK_BOX": "true",
                "LITELLM_LOG": "ERROR",
                "NO_DOCS": "True",
                "DISABLE_ADMIN_UI": "True",
                "NO_PROXY": "127.0.0.1,localhost",
                "HF_HUB_OFFLINE": "1",
            }
        )
        cmd = [
            *ov.pin_prefix(ov.GW_CORE),
            str(self.exe),
            "--config",
            str(cfg),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--num_workers",
            "1",
        ]
        return cmd, env


def ratio(t: dict[str, Any], ll: dict[str, Any]) -> float:
    """Tollgate's req/s over LiteLLM's. When LiteLLM finished no request in its measured
    seconds its rate was under 1/seconds, so the ratio is at least Tollgate's rate times them
    (at c256 it can take longer than a round to finish any of its 256 requests)."""
    return t["rps"] / ll["rps"] if ll["rps"] else t["rps"] * ll["seconds"]


def ratio_text(t: dict[str, Any], ll: dict[str, Any]) -> str:
    if ll["rps"]:
        return f"{ratio(t, ll):.1f}x"
    return f"> {ratio(t, ll):,.0f}x (LiteLLM finished none in {ll['seconds']:.0f} s)"


def peer_lines(run: ov.Run, tg: str, note: str) -> list[str]:
    out = ["Tollgate vs LiteLLM, each measured alone on core 0 in the same invocation:\n"]
    out.append(
        "| scenario | Tollgate req/s | LiteLLM req/s | req/s ratio | Tollgate p50 ms "
        "| LiteLLM p50 ms | Tollgate CPU µs/req | LiteLLM CPU µs/req | CPU/req ratio |"
    )
    out.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for sc in run.scenarios:
        rows = run.results.get(sc.key, {})
        t, ll = rows.get(tg), rows.get("litellm")
        if not t or not ll or "failed" in t or "failed" in ll:
            out.append(
                f"| ({sc.key}) | {'-' if not t else ov.f0(t.get('rps'))} | "
                f"{'n/a' if not ll else ll.get('failed', '-')[:80]} | - | - | - | - | - | - |"
            )
            continue
        tc, lc = t.get("cpu_us_per_req"), ll.get("cpu_us_per_req")
        cratio = f"{lc / tc:.1f}x" if tc and lc else "-"
        out.append(
            f"| ({sc.key}) {sc.title} | {ov.f0(t['rps'])} | {ov.f0(ll['rps'])} | "
            f"{ratio_text(t, ll)} | "
            f"{ov.f3(t['p50_ms'])} | {ov.f3(ll['p50_ms'])} | {ov.f0(tc)} | {ov.f0(lc)} | "
            f"{cratio} |"
        )
    out.append("")
    out.append(
        "`CPU/req ratio` = LiteLLM's CPU time per request / Tollgate's: how many times more "
        "requests Tollgate carries per core-second. On this shared machine other tenants also "
        "run on core 0, so it is steadier than the req/s ratio.\n"
    )
    c = run.results.get("c", {})
    if c.get(tg) and c.get("litellm") and "failed" not in c["litellm"]:
        t, ll = c[tg], c["litellm"]
        tc, lc = t.get("cpu_us_per_req"), ll.get("cpu_us_per_req")
        cpu = f", {lc / tc:.1f}x by CPU per request" if tc and lc else ""
        verdict = "met" if ratio(t, ll) >= 20 else "MISSED"
        out.append(
            f"Target (c) >= 20x LiteLLM's req/s on the same core: **{ratio_text(t, ll)}** "
            f"({t['rps']:.0f} vs {ll['rps']:.1f} req/s{cpu}): **{verdict}**.\n"
        )
    out.append(f"LiteLLM: {note}.")
    out.append("")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ov.common_args(p)
    p.add_argument("--store", default="none", choices=["none", "sqlite"])
    p.add_argument(
        "--mode",
        default="auto",
        choices=["pinned", "auto"],
        help='Tollgate with model="auto" (the router on, as users run it) or a pinned model',
    )
    args = p.parse_args(argv)
    keys = ov.parse_list(args.scenarios, "abcd", "scenarios")
    exe, note = ensure_litellm()
    ov.setup_pinning()
    tg = ov.Tollgate(store=args.store, mode=args.mode)
    targets: list[ov.Target] = [ov.Direct(), tg]
    if exe is not None:
        targets.append(LiteLLM(exe))
    all_sc = ov.make_scenarios(args.quick)
    run = ov.Run([all_sc[k] for k in keys], targets, args.quick, ov.rounds_of(args))
    if exe is None:
        run.unavailable["litellm"] = f"install failed: {note}"
    t0 = time.monotonic()
    load0 = ov.loadavg()
    ov.run_matrix(run)
    load1 = ov.loadavg()
    argv_s = " ".join(argv if argv is not None else sys.argv[1:])
    command = f".venv/bin/python bench/litellm_peer.py {argv_s}".strip()
    lines = ov.header_lines(command, run.rounds)
    lines.append(
        "- LiteLLM: `litellm --config F --port P --num_workers 1` under `taskset -c 0`, "
        "one model `openai/` → the fake upstream, master key, no database, "
        "LITELLM_LOCAL_MODEL_COST_MAP=True, LITELLM_TELEMETRY=False, "
        "LITELLM_MODE=PRODUCTION"
    )
    lines.append(
        f"- wall time of the whole run: {time.monotonic() - t0:.0f} s; load average "
        f"{load0} at the start, {load1} at the end (other tenants share both cores)"
    )
    lines.append("")
    lines += peer_lines(run, tg.name, note)
    lines.append("Full tables (all three targets):\n")
    lines += ov.tables(run)
    body = "\n".join(lines)
    print("\n" + body)
    ov.save_json(run, "litellm-quick" if args.quick else "litellm", {"command": command})
    if not args.no_write:
        ov.update_section("Peer: LiteLLM", body)
        ov.log("updated bench/results/latest.md: section 'Peer: LiteLLM'")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Two settings of the same local model compared by `tollgate bench-model`: llama-server with
Gemma 3 270M at --parallel 1 and at --parallel 4 (speed, cost, exact-match accuracy).

    scripts/local-model install
    .venv/bin/python bench/llamacpp_settings.py [--parallel 1,4] [--levels 1,2,4] \
        [--requests-per-stream 3] [--max-tokens 32] [--scored builtin]

Starts one llama-server per setting on a free port (each with its own run directory, so they
do not share scripts/local-model's pid file; context 2,048 tokens per slot, `--threads 1`),
then runs one `tollgate bench-model gemma-local --url ... --url ...` over all of them with
config/examples/local-llamacpp.yaml's hourly price, prints its tables, and stops them.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "local-model"
EXAMPLE = REPO / "config" / "examples" / "local-llamacpp.yaml"
CTX_PER_SLOT = 2048


@dataclass
class LlamaServer:
    """A llama-server that scripts/local-model started in its own run directory."""

    port: int
    run_dir: Path
    parallel: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _env(self) -> dict[str, str]:
        return {**os.environ, "TOLLGATE_LOCAL_RUN_DIR": str(self.run_dir)}

    def start(self) -> LlamaServer:
        extra = ["--parallel", str(self.parallel), "-c", str(CTX_PER_SLOT * self.parallel)]
        r = subprocess.run(
            [str(SCRIPT), "start", "--port", str(self.port), "--", *extra, "--metrics"],
            capture_output=True, text=True, timeout=120, env=self._env(),
        )  # fmt: skip
        if r.returncode != 0 or "READY" not in r.stdout:
            raise RuntimeError(f"llama-server did not start:\n{r.stdout}{r.stderr}")
        return self

    def stop(self) -> None:
        subprocess.run(
            [str(SCRIPT), "stop"], capture_output=True, timeout=60, env=self._env(), check=False
        )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--parallel", default="1,4", help="llama-server --parallel per setting")
    ap.add_argument("--levels", default="1,2,4")
    ap.add_argument("--requests-per-stream", default="3")
    ap.add_argument("--max-tokens", default="32")
    ap.add_argument("--scored", default="builtin")
    args = ap.parse_args()
    settings = [int(p) for p in args.parallel.split(",")]
    servers: list[LlamaServer] = []
    with tempfile.TemporaryDirectory(prefix="tollgate-llama-") as tmp:
        try:
            for p in settings:
                servers.append(LlamaServer(free_port(), Path(tmp) / f"p{p}", p).start())
            cmd = [sys.executable, "-m", "gateway.cli", "bench-model", "gemma-local",
                   "--config", str(EXAMPLE), "--levels", args.levels,
                   "--requests-per-stream", args.requests_per_stream,
                   "--max-tokens", args.max_tokens, "--scored", args.scored]  # fmt: skip
            for s in servers:
                cmd += ["--url", s.base_url, "--label", f"parallel {s.parallel}"]
            return subprocess.run(cmd, cwd=str(REPO)).returncode
        finally:
            for s in servers:
                s.stop()


if __name__ == "__main__":
    raise SystemExit(main())

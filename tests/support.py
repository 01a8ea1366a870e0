"""Start the real gateway as a uvicorn subprocess on 127.0.0.1, the way a user runs it."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NoReturn

import httpx
from prometheus_client.parser import text_string_to_metric_families

from gateway.demo.procutil import stop_process

REPO = Path(__file__).resolve().parent.parent
LOG_PREFIX = "tollgate-gw-"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def model_block(name: str, tier: str, base_url: str, **extra: Any) -> str:
    lines = [
        f"  - name: {name}",
        f"    tier: {tier}",
        "    endpoints:",
        f"      - base_url: {base_url}",
        f"        model: upstream-{name}",
    ]
    for k, v in extra.items():
        lines.append(f"    {k}: {v}")
    return "\n".join(lines)


def router_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`tollgate router ARGS` (router_models.cli) in a subprocess from the repo root."""
    return subprocess.run(
        [sys.executable, "-m", "router_models.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# Three routed tiers, each scored by a real router profile and priced from its hardware:
# (name = tier, profile, pricing)
TIERS = [
    ("small", "gemma-2b-it", "{hardware_usd_per_hour: 0.35, tokens_per_second: 120}"),
    ("medium", "vicuna-13b-v1.5", "{hardware_usd_per_hour: 1.2, tokens_per_second: 60}"),
    ("large", "humpback-llama2-70b", "{hardware_usd_per_hour: 4.8, tokens_per_second: 30}"),
]


def tier_models(base_urls: dict[str, str], extra: dict[str, str] | None = None) -> list[str]:
    """The routing-file lines of the TIERS models (no retries), each at its base URL; `extra`
    adds one line of settings to the named model."""
    lines: list[str] = []
    for name, profile, pricing in TIERS:
        lines += [
            f"  - name: {name}",
            f"    tier: {name}",
            f"    profile: {profile}",
            f"    pricing: {pricing}",
            "    retries: 0",
            f"    endpoints: [{{base_url: '{base_urls[name]}'}}]",
        ]
        if extra and name in extra:
            lines.append(f"    {extra[name]}")
    return lines


def wait_answering(proc: subprocess.Popen[bytes], url: str, timeout: float) -> str | None:
    """Poll `url` until it answers 200 (None) or `proc` exits or `timeout` passes (why not)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return "exited early"
        try:
            if httpx.get(url, timeout=0.5).status_code == 200:
                return None
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    return "did not answer in time"


def open_auth(config_text: str) -> str:
    """A routing file that says nothing of `auth:` runs without gateway keys, as most tests
    (about routing, not keys) expect; the gateway's own default is keys required."""
    if re.search(r"^auth\s*:", config_text, re.M) or config_text.lstrip().startswith("{"):
        return config_text
    return config_text.rstrip("\n") + "\nauth: {required: false}\n"


class GatewayProcess:
    """`tollgate serve --config FILE` in a subprocess; stopped by its PID only."""

    def __init__(
        self,
        config_text: str,
        tmp: Path,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
    ) -> None:
        self.tmp = tmp
        self.args = list(args or [])
        self.config_path = tmp / "routing.yaml"
        self.config_path.write_text(open_auth(config_text))
        self.port = free_port()
        self.env = dict(os.environ)
        self.env.setdefault("TOLLGATE_DB", str(tmp / "tollgate.db"))
        self.env["PYTHONPATH"] = str(REPO)
        self.env.update(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        # removed by close(); named after this test process so that the session check in
        # conftest.py finds what this run left behind, and only that
        prefix = f"{LOG_PREFIX}{os.getpid()}-"
        self.log = tempfile.NamedTemporaryFile(prefix=prefix, suffix=".log", delete=False)  # noqa: SIM115

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def start(self, timeout: float = 60.0) -> GatewayProcess:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway.cli",
                "serve",
                "--config",
                str(self.config_path),
                "--port",
                str(self.port),
                "--log-level",
                "info",
                *self.args,
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=str(REPO),
        )
        why = wait_answering(self.proc, f"{self.url}/healthz", timeout)
        if why is None:
            return self
        self._fail_start(f"gateway {why}")

    def _fail_start(self, what: str) -> NoReturn:
        """Nobody holds a gateway that failed to start: stop it and remove its log here."""
        logs = self.logs()
        self.close()
        raise RuntimeError(f"{what}:\n{logs}")

    def logs(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def write_config(self, text: str) -> None:
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(open_auth(text))
        os.replace(tmp, self.config_path)

    def sighup(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGHUP)

    def stop(self, timeout: float = 15.0) -> int | None:
        return stop_process(self.proc, grace=timeout)

    def close(self) -> None:
        """Stop the gateway and remove its log file."""
        self.stop()
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A /metrics page as {(sample name, sorted labels): value}."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def metric_total(samples: dict[Any, float], name: str, **match: str) -> float:
    """The sum of `name`'s samples whose labels include `match`."""
    return sum(
        v
        for (n, labels), v in samples.items()
        if n == name and all(dict(labels).get(k) == val for k, val in match.items())
    )

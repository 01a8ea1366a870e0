"""The deployment's nginx config (deploy/nginx/nginx.conf) rendered for a test, and a real
nginx serving it: on 127.0.0.1 at a free port, with its own prefix folder for the pid, the
logs and the temp files, in front of gateways on loopback ports. Ended by its own PID."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.demo.procutil import stop_process
from tests.support import REPO, free_port, wait_answering

CONF = REPO / "deploy" / "nginx" / "nginx.conf"
# Debian's packages of the tools the deployment checks use, for the skip / failure message
PACKAGES = {
    "nginx": "nginx",
    "promtool": "prometheus",
    "docker-compose": "docker-compose",
    "kubectl": "kubernetes-client",
}


def need_tool(name: str) -> str:
    """The path of the command `name`; without it the test is skipped, or fails under CI=true
    (.ci/run installs every one of them, so a missing one there is a broken CI)."""
    found = shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/usr/local/sbin")
    if found:
        return found
    msg = f"{name} is not installed: apt-get install -y {PACKAGES.get(name, name)}  (.ci/run does)"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


def render(prefix: Path, port: int, upstreams: list[str], text: str | None = None) -> str:
    """deploy/nginx/nginx.conf for loopback: listening on 127.0.0.1:`port`, the upstream
    `server` lines pointing at `upstreams` (as many as the file has), one worker, and the pid,
    logs and temp folders under `prefix`. Every rewrite must apply exactly as often as
    expected, so a change of the file that the rendering no longer fits fails loudly."""
    conf = CONF.read_text() if text is None else text

    def sub(pattern: str, repl: str, s: str, count: int = 1) -> str:
        out, n = re.subn(pattern, repl, s, flags=re.M)
        assert n == count, f"{CONF}: expected {count} match(es) of {pattern!r}, found {n}"
        return out

    servers = re.findall(r"^\s*server\s+([\w.-]+:\d+)\b", conf, flags=re.M)
    assert len(servers) == len(upstreams), f"{CONF} has upstream servers {servers}"
    for name, addr in zip(servers, upstreams, strict=True):
        conf = sub(rf"^(\s*server\s+){re.escape(name)}\b", rf"\g<1>{addr}", conf)
    conf = sub(r"^(\s*listen\s+)\d+;", rf"\g<1>127.0.0.1:{port};", conf)
    conf = sub(r"^worker_processes\s+\S+;", "worker_processes 1;", conf)
    conf = sub(r"(access_log\s+)/\S+", rf"\g<1>{prefix}/access.log", conf)
    temp = "".join(
        f"    {kind}_temp_path {prefix}/{kind}_temp;\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = sub(r"^http \{\n", "http {\n" + temp, conf)
    head = f"pid {prefix}/nginx.pid;\nerror_log {prefix}/error.log warn;\n"
    return head + conf


class NginxServer:
    """nginx on the rendered deploy config, in the foreground, stopped by its PID."""

    def __init__(self, prefix: Path, upstreams: list[str]) -> None:
        self.binary = need_tool("nginx")
        self.prefix = prefix
        self.prefix.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.conf = prefix / "nginx.conf"
        self.conf.write_text(render(prefix, self.port, upstreams))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def args(self, *more: str) -> list[str]:
        return [self.binary, "-p", str(self.prefix), "-c", str(self.conf), *more]

    def test_config(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.args("-t"), capture_output=True, text=True, timeout=30)

    def start(self, timeout: float = 10.0) -> NginxServer:
        log = open(self.prefix / "stderr.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(self.args("-g", "daemon off;"), stdout=log, stderr=log)
        log.close()
        why = wait_answering(self.proc, f"{self.url}/nginx-health", timeout)
        if why is None:
            return self
        logs = self.logs()
        self.stop()
        raise RuntimeError(f"nginx {why}: {logs}")

    def logs(self) -> str:
        files = (self.prefix / "stderr.log", self.prefix / "error.log")
        return "\n".join(p.read_text(errors="replace") for p in files if p.exists())

    def access_log(self) -> str:
        p = self.prefix / "access.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def stop(self) -> None:
        stop_process(self.proc, grace=10)
        self.proc = None

"""Start and stop the replay backend as a subprocess (for the demo and the tests)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import TracebackType
from typing import IO

from gateway.demo.procutil import first_line, stop_process

_REPO_ROOT = Path(__file__).resolve().parents[3]


class ReplayServer:
    """`python -m gateway.demo.replay --listen ...` in a subprocess; stopped by its PID only.

    ::

        with ReplayServer([0, 0], speed=100) as rs:
            rs.ports  # the ports it listens on, in the order given
    """

    def __init__(self, ports: list[int], speed: float = 1.0, startup_timeout: float = 30.0) -> None:
        self.requested = list(ports)
        self.speed = speed
        self.startup_timeout = startup_timeout
        self.ports: list[int] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None

    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.ports[i]}/v1"

    def start(self) -> ReplayServer:
        cmd = [sys.executable, "-m", "gateway.demo.replay", "--speed", str(self.speed),
               "--exit-on-stdin-eof"]  # fmt: skip
        for p in self.requested:
            cmd += ["--listen", f"127.0.0.1:{p}"]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            x for x in (str(_REPO_ROOT), env.get("PYTHONPATH", "")) if x
        )
        env["PYTHONUNBUFFERED"] = "1"
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=env
        )
        try:
            line = self._first_line()
            if not line.startswith("READY "):
                raise RuntimeError(
                    f"replay backend failed to start ({line or 'no output'}):\n{self.logs()}"
                )
            self.ports = [int(x) for x in line.split()[1:]]
        except BaseException:
            self.stop()
            raise
        return self

    def _first_line(self) -> str:
        assert self.proc is not None
        return first_line(self.proc, self.startup_timeout) or ""

    def logs(self) -> str:
        if self._stderr is None:
            return ""
        with contextlib.suppress(OSError, ValueError):
            self._stderr.seek(0)
            return self._stderr.read().decode(errors="replace")
        return ""

    def stop(self, grace: float = 5.0) -> None:
        proc = self.proc
        stop_process(proc, grace)
        if proc is not None:
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        if self._stderr is not None:
            with contextlib.suppress(OSError):
                self._stderr.close()
            self._stderr = None

    def __enter__(self) -> ReplayServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

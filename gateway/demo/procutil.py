"""Process plumbing shared by the test servers (fake upstream, replay): READY lines, stdin EOF."""

from __future__ import annotations

import asyncio
import contextlib
import os
import selectors
import socket
import subprocess
import sys
import threading
import time
from typing import Any


def first_line(proc: subprocess.Popen[bytes], timeout: float) -> str | None:
    """The first stdout line of `proc`; "" if it exited or closed stdout, None on timeout."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if not sel.select(timeout=min(remaining, 0.1)):
                if proc.poll() is not None:
                    break
                continue
            data = os.read(fd, 4096)
            if not data:
                break
            buf += data
    return buf.split(b"\n", 1)[0].decode(errors="replace").strip()


def exit_on_stdin_eof(server: Any) -> None:
    """Ask a uvicorn server to exit once stdin closes (the parent process went away)."""
    loop = asyncio.get_running_loop()

    def watch() -> None:
        with contextlib.suppress(Exception):
            while sys.stdin.buffer.read(4096):
                pass
        loop.call_soon_threadsafe(setattr, server, "should_exit", True)

    threading.Thread(target=watch, name="stdin-eof", daemon=True).start()


def bind(host: str, port: int, retry_s: float = 5.0) -> socket.socket:
    """A listening-ready socket; a restart on the same port retries while the old one exits."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    deadline = time.monotonic() + retry_s
    while True:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            if port == 0 or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)
            continue
        sock.setblocking(False)
        sock.set_inheritable(False)
        return sock


async def serve(app: Any, socks: list[socket.socket], exit_on_eof: bool) -> int:
    """Serve `app` under uvicorn (uvloop, httptools) and print `READY <port> ...` once up."""
    import uvicorn

    config = uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
        server_header=False,
        # Keep idle keep-alive connections much longer than client pools do, so that benchmarks
        # never race the server closing a connection the client is about to reuse.
        timeout_keep_alive=300,
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=socks))
    while not server.started and not task.done():
        await asyncio.sleep(0.005)
    if task.done():
        task.result()
        return 1
    ports = " ".join(str(s.getsockname()[1]) for s in socks)
    sys.stdout.write(f"READY {ports}\n")
    sys.stdout.flush()
    if exit_on_eof:
        exit_on_stdin_eof(server)
    await task
    return 0


def stop_process(proc: subprocess.Popen[Any] | None, grace: float = 5.0) -> int | None:
    """SIGTERM `proc` (only this PID), wait `grace` seconds, then SIGKILL; its exit code."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.terminate()
        try:
            return proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(timeout=5)
    return proc.returncode

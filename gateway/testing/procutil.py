"""Process plumbing shared by the test servers (fake upstream, replay): READY lines, stdin EOF."""

from __future__ import annotations

import asyncio
import contextlib
import os
import selectors
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

"""A loopback TCP fault proxy: put it between the gateway and a real server (Redis,
PostgreSQL) to make that server look down, back, or slow, without touching the server.

``FaultProxy(target_port).start()`` listens on a free 127.0.0.1 port in a thread of this
process and forwards each connection to ``127.0.0.1:target_port``. ``down()`` closes every
open connection, and while down a new connection is accepted and closed at once (to the
client the server is gone); ``up()`` forwards again; ``slow(seconds)`` delays every
forwarded piece by that much (both directions).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class FaultProxy:
    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.port = int(self.listener.getsockname()[1])
        self.is_down = False
        self.delay = 0.0
        self.accepted = 0
        self._socks: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stop = False

    def start(self) -> FaultProxy:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def down(self) -> None:
        self.is_down = True
        with self._lock:
            socks, self._socks = list(self._socks), set()
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def up(self) -> None:
        self.is_down = False

    def slow(self, seconds: float) -> None:
        self.delay = seconds

    def close(self) -> None:
        self._stop = True
        self.down()
        self.listener.close()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.is_down:
                client.close()  # accepted and dropped: to the client, the server is gone
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            self.accepted += 1
            with self._lock:
                self._socks |= {client, server}
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if self.delay:
                    time.sleep(self.delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            with self._lock:
                self._socks -= {src, dst}

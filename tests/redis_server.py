"""A private redis-server for tests: free port on 127.0.0.1, ended by its own PID.

Never touches a system Redis. By default nothing is persisted (--save "" --appendonly no);
`durable=True` turns on an fsync-always AOF in the test's temp dir so a SIGKILL loses nothing
that Redis acknowledged (what the kill-and-restart test needs). `RedisClusterServers` starts
three such servers with `--cluster-enabled yes` and joins them into one cluster (three
primaries, no replicas) with `redis-cli --cluster create`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from gateway.demo.procutil import stop_process

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


def have_redis() -> bool:
    return os.path.exists(REDIS_SERVER)


def have_redis_cluster() -> bool:
    return have_redis() and os.path.exists(REDIS_CLI)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    def __init__(
        self, workdir: Path, port: int | None = None, durable: bool = False, cluster: bool = False
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.durable = durable
        self.cluster = cluster
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        args = [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.workdir),
            "--save", "",
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--loglevel", "warning",
        ]  # fmt: skip
        if self.durable:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        if self.cluster:  # its node file in the temp dir; the bus listens on port + 10000
            nodes_file = str(self.workdir / f"nodes-{self.port}.conf")
            args += ["--cluster-enabled", "yes", "--cluster-config-file", nodes_file]
        log = open(self.workdir / f"redis-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited early, see {self.workdir}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("redis-server did not answer PING in time")

    def kill(self) -> None:
        """SIGKILL: the crash case."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None

    def stop(self) -> None:
        stop_process(self.proc, grace=5)
        self.proc = None


def free_cluster_port(tries: int = 200) -> int:
    """A free loopback port P whose cluster bus port P + 10000 is free too."""
    for _ in range(tries):
        p = free_port()
        if p + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p + 10000))
            except OSError:
                continue
        return p
    raise RuntimeError("no free port pair for a cluster node")


class RedisClusterServers:
    """Three redis-server processes on loopback ports joined into one cluster; the 16384
    slots are split between them by `redis-cli --cluster create`. Each is stopped by its
    PID."""

    def __init__(self, workdir: Path, size: int = 3, durable: bool = False) -> None:
        self.workdir = Path(workdir)
        ports = [free_cluster_port() for _ in range(size)]
        self.nodes = [  # a folder each: an AOF (durable) is a folder of fixed name
            RedisServer(self.workdir / str(p), port=p, durable=durable, cluster=True) for p in ports
        ]

    @property
    def url(self) -> str:
        """A startup-node URL (the first node's); the client finds the others from it."""
        return self.nodes[0].url

    def cli(self, port: int, *args: str, timeout: float = 10.0) -> str:
        done = subprocess.run(
            [REDIS_CLI, "-h", "127.0.0.1", "-p", str(port), *args],
            capture_output=True,
            timeout=timeout,
            check=True,
        )
        return done.stdout.decode()

    def owner(self, key: str) -> RedisServer:
        """The node whose slots hold `key` (its hash tag decides)."""
        slot = int(self.cli(self.nodes[0].port, "CLUSTER", "KEYSLOT", key))
        for line in self.cli(self.nodes[0].port, "CLUSTER", "NODES").splitlines():
            parts = line.split()
            port = int(parts[1].split("@")[0].rsplit(":", 1)[1])
            for rng in parts[8:]:
                lo, _, hi = rng.partition("-")
                if not lo.isdigit():
                    continue  # a slot being migrated: "[slot->-node]"
                if int(lo) <= slot <= int(hi or lo):
                    return next(n for n in self.nodes if n.port == port)
        raise AssertionError(f"no node owns slot {slot}")

    def start(self, timeout: float = 30.0) -> RedisClusterServers:
        try:
            for n in self.nodes:
                n.start()
            addrs = [f"127.0.0.1:{n.port}" for n in self.nodes]
            self.cli(self.nodes[0].port, "--cluster", "create", *addrs,
                     "--cluster-replicas", "0", "--cluster-yes", timeout=timeout)  # fmt: skip
            deadline = time.monotonic() + timeout
            while not all(
                "cluster_state:ok" in self.cli(n.port, "CLUSTER", "INFO") for n in self.nodes
            ):
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the cluster did not reach cluster_state:ok, see {self.workdir}"
                    )
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()

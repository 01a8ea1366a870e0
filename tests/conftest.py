from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fake_upstream import FakeUpstream
from tests.redis_server import RedisClusterServers, have_redis_cluster
from tests.support import LOG_PREFIX, GatewayProcess

# what makes each kind of skipped test run (by its marker)
RUN_SKIPPED = {
    "llamacpp": "scripts/local-model install   (builds llama.cpp once per machine; .ci/run does)",
    "redis": "apt-get install -y redis-server",
    "postgres": "apt-get install -y postgresql && pg_ctlcluster 15 main start",
    "browser": "apt-get install -y chromium chromium-driver",
    "deploy": "apt-get install -y nginx prometheus docker-compose kubernetes-client",
}


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    """End the run with a banner naming every test that did not run and how to run it.

    CI (.ci/run) installs everything, and there the llama.cpp fixture fails instead of
    skipping (CI=true), so a skip can only be local; it must still not pass unnoticed."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if r.nodeid]
    if not skipped:
        return
    tw = terminalreporter
    tw.write_sep("!", f"{len(skipped)} TESTS DID NOT RUN", red=True, bold=True)
    commands: dict[str, None] = {}
    for r in skipped:
        reason = r.longrepr[2] if isinstance(r.longrepr, tuple) else str(r.longrepr)
        tw.write_line(f"  {r.nodeid}  ({reason.removeprefix('Skipped: ')})", red=True)
        for marker, command in RUN_SKIPPED.items():
            if marker in r.keywords:
                commands[command] = None
    if commands:
        tw.write_line("to run them, then `make test` again:", red=True, bold=True)
        for command in commands:
            tw.write_line(f"  {command}", red=True, bold=True)
    tw.write_sep("!", "a skipped test is not a passed test", red=True, bold=True)


@pytest.fixture(scope="session", autouse=True)
def no_files_left_behind() -> Iterator[None]:
    """Fail the run if the test helpers leave their gateway logs in the temp folder.

    The logs carry this process's PID in their names, so runs in parallel do not count
    each other's files."""
    pattern = f"{LOG_PREFIX}{os.getpid()}-*.log"
    tmp = Path(tempfile.gettempdir())
    before = set(tmp.glob(pattern))
    yield
    left = sorted(str(p) for p in set(tmp.glob(pattern)) - before)
    if left:
        pytest.fail(
            f"the test run left {len(left)} gateway log file(s) behind (a GatewayProcess "
            f"that was never closed): {', '.join(left[:5])}",
            pytrace=False,
        )


@pytest.fixture
def fakes() -> Iterator[Callable[..., FakeUpstream]]:
    """Factory of fake upstream processes, all stopped at the end of the test."""
    started: list[FakeUpstream] = []

    def make(name: str = "fake", **kw: Any) -> FakeUpstream:
        fu = FakeUpstream(name=name, **kw).start()
        started.append(fu)
        return fu

    yield make
    for fu in started:
        fu.close()


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    """Factory: start the real gateway on a config text; stopped at the end of the test."""
    started: list[GatewayProcess] = []

    def make(
        config_text: str, env: dict[str, str] | None = None, args: list[str] | None = None
    ) -> GatewayProcess:
        sub = tmp_path / f"gw{len(started)}"
        sub.mkdir()
        gp = GatewayProcess(config_text, sub, env, args).start()
        started.append(gp)
        return gp

    yield make
    for gp in started:
        gp.close()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A three-node Redis Cluster on loopback ports, shared by the session (it takes ~2 s to
    start); tests keep apart by key prefix."""
    if not have_redis_cluster():
        pytest.skip("redis-server / redis-cli not installed")
    cluster = RedisClusterServers(tmp_path_factory.mktemp("redis-cluster")).start()
    yield cluster
    cluster.stop()

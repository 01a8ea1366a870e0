from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fake_upstream import FakeUpstream
from tests.support import LOG_PREFIX, GatewayProcess


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

"""The suite's own checks (tests/conftest.py): skipped tests are announced at the end of the
run with the command that runs them, and a run that leaves gateway logs behind fails."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.support import LOG_PREFIX, REPO

SKIPPED = """
import pytest

@pytest.mark.llamacpp
def test_needs_llama() -> None:
    pytest.skip("llama.cpp is not installed")

def test_runs() -> None:
    pass
"""

LEAKS = """
import os, tempfile
from pathlib import Path

def test_leaks_a_log() -> None:
    Path(tempfile.gettempdir(), f"{LOG_PREFIX}{os.getpid()}-leak.log").write_text("x")
"""


def _pytest(tmp_path: Path, text: str) -> tuple[int, str]:
    """Run pytest with this suite's conftest on one test file, in a fresh folder."""
    (tmp_path / "test_it.py").write_text(text)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("CI", None)
    cmd = [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider",
           "-q", "test_it.py"]  # fmt: skip
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    return r.returncode, r.stdout + r.stderr


def test_a_skipped_llamacpp_test_is_announced_with_the_command_that_runs_it(
    tmp_path: Path,
) -> None:
    rc, out = _pytest(tmp_path, SKIPPED)
    assert rc == 0, out
    tail = out[out.index("1 TESTS DID NOT RUN") :]
    assert "test_it.py::test_needs_llama  (llama.cpp is not installed)" in tail
    assert "scripts/local-model install" in tail
    assert "test_runs" not in tail


def test_a_run_that_leaves_a_gateway_log_behind_fails(tmp_path: Path) -> None:
    rc, out = _pytest(tmp_path, LEAKS.replace("{LOG_PREFIX}", LOG_PREFIX))
    left = list(Path(tempfile.gettempdir()).glob(f"{LOG_PREFIX}*-leak.log"))
    for p in left:  # what the run above made
        p.unlink()
    assert rc != 0, out
    assert "left 1 gateway log file(s) behind" in out

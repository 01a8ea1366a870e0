"""The wheel as a new user meets it: built, installed into a fresh virtualenv, run from a
directory outside the source tree, with nothing but what the wheel ships.

The wheel is built without build isolation from a copy of the tracked files (setuptools
comes from the dev extra, so no network at test time), installed with `--no-deps` into a
new virtualenv whose only other path is a `.pth` line naming the site-packages of the
Python running the tests (the dependencies: `.ci/run` has installed them there). That
site-packages holds the editable install of this tree, but a path added by a `.pth` line
is not a site directory: its own `.pth` files (the editable hook) are not read, so
`gateway` and `router_models` can only come from the wheel, which the test checks.

Costs about 30-40 s (the build compiles router_models/_lexical.c; the demo sends 20
requests), once for the module.
"""

from __future__ import annotations

import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import httpx
import pytest

from gateway.demo.procutil import stop_process
from tests.support import REPO, free_port

BANNERS = ("Deprecat", "SetuptoolsDeprecationWarning", "experimental")


JUNK = (".git", ".venv", "var", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".local")


def _tracked_copy(dst: Path) -> None:
    """The files a fresh checkout has (no .venv, build/, egg-info or caches)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                                check=True, timeout=60).stdout.decode()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):  # not a git checkout
        shutil.copytree(REPO, dst, ignore=shutil.ignore_patterns(*JUNK), dirs_exist_ok=True)
        return
    for name in filter(None, listed.split("\0")):
        src = REPO / name
        if src.is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)


class Installed:
    def __init__(self, root: Path, build_log: str, install_log: str) -> None:
        self.root = root
        self.bin = root / "venv" / "bin"
        self.build_log = build_log
        self.install_log = install_log
        self.home = root / "home"  # the user's working directory, outside the source tree
        self.home.mkdir()

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("TOLLGATE_", "PYTHON", "VIRTUAL_ENV"))
        }
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        env.update(extra)
        return env

    def run(self, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / "tollgate"), *args],
            cwd=self.home,
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("wheel")
    src, dist = root / "src", root / "dist"
    src.mkdir()
    _tracked_copy(src)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "-w", str(dist), str(src)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout + build.stderr
    wheels = list(dist.glob("tollgate-*.whl"))
    assert len(wheels) == 1, wheels
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)  # fmt: skip
    py = venv / "bin" / "python"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index",
         str(wheels[0])],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr
    purelib = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    deps.append(sysconfig.get_path("purelib"))
    (Path(purelib) / "_tollgate_test_deps.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")
    return Installed(root, build.stdout + build.stderr, install.stdout + install.stderr)


def test_building_and_installing_the_wheel_prints_no_deprecation_banner(
    installed: Installed,
) -> None:
    for log in (installed.build_log, installed.install_log):
        for banner in BANNERS:
            assert banner not in log, log


def test_the_wheel_runs_from_its_own_files_not_the_source_tree(installed: Installed) -> None:
    r = subprocess.run(
        [str(installed.bin / "python"), "-c",
         "import gateway, router_models.lexical as m; print(gateway.__file__); print(m.NATIVE)"],
        cwd=installed.home, env=installed.env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    where, native = r.stdout.split()
    assert Path(where).is_relative_to(installed.root / "venv"), where
    assert native == "True"  # the C featurizer was built into the wheel


def test_demo_runs_outside_the_source_tree_and_names_its_config(installed: Installed) -> None:
    r = installed.run(
        "demo", "--no-wait", "--n", "20", "--port", "0", "--speed", "1000", "--dir", "demo"
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    packaged = installed.root / "venv"
    line = next(ln for ln in r.stderr.splitlines() if ln.startswith("config: "))
    assert "(the packaged default" in line, line
    assert Path(line.split()[1]).is_relative_to(packaged), line
    assert "cost vs always-large" in r.stdout
    # the records it kept, read back by `tollgate report`
    db = installed.home / "demo" / "tollgate.db"
    rep = installed.run("report", "--since", "1h", TOLLGATE_DB=str(db))
    assert rep.returncode == 0, rep.stderr
    assert re.search(r"^TOTAL +20 ", rep.stdout, re.M), rep.stdout  # the 20 routed requests
    assert f"store SQLite at {db}" in rep.stdout


def test_serve_then_report_on_the_packaged_default(installed: Installed) -> None:
    port = free_port()
    log = installed.root / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(installed.bin / "tollgate"), "serve", "--port", str(port)],
            cwd=installed.home, env=installed.env(), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert status == 200, log.read_text()
    finally:
        stop_process(proc, grace=15)
    text = log.read_text()
    assert "Traceback" not in text, text
    config_line = next(ln for ln in text.splitlines() if ln.startswith("config: "))
    assert "(the packaged default)" in config_line
    packaged = Path(config_line.split()[1])
    assert packaged.is_relative_to(installed.root / "venv"), config_line
    assert packaged.name == "routing.yaml" and packaged.is_file()
    # the packaged default's relative sqlite_path is under the directory it ran in
    assert (installed.home / "var" / "tollgate.db").is_file()

    rep = installed.run("report")
    assert rep.returncode == 0, rep.stdout + rep.stderr
    assert f"config: {packaged} (the packaged default)" in rep.stderr
    assert "(no requests)" in rep.stdout

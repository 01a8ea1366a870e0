"""What the deployment files (deploy/, Dockerfile) expect of a running gateway, checked on
real gateway processes: a Kubernetes ConfigMap update reloads the routing file, the image's
environment sets the workers, its HEALTHCHECK command tells a live gateway from a dead one,
and every metric the Grafana dashboard and the alert rules query is exported."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.fake_upstream import FakeUpstream
from tests.support import REPO, GatewayProcess, model_block
from tests.test_accounting_e2e import wait_for

Fakes = Callable[..., FakeUpstream]
DEPLOY = REPO / "deploy"


def _models(gw: GatewayProcess) -> set[str]:
    r = httpx.get(f"{gw.base_url}/models", timeout=5)
    assert r.status_code == 200, r.text
    return {m["id"] for m in r.json()["data"]}


class ConfigMapFolder:
    """A folder laid out as the kubelet lays out a ConfigMap volume: each version of the
    files in its own `..<timestamp>` folder, `..data` a symlink to the current one, and each
    key a symlink through `..data` (routing.yaml -> ..data/routing.yaml). An update writes a
    new version folder, points a temporary symlink at it, renames that over `..data` (the
    atomic step) and removes the old folder: the path the gateway was given never changes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir()
        self.n = 0
        self.current: Path | None = None

    @property
    def path(self) -> Path:
        return self.root / "routing.yaml"

    def write(self, text: str, like: Path | None = None) -> None:
        """A new version holding `text`; with `like`, its file takes that file's modification
        time (as `tar`, `cp -p` or `rsync -t` leave a copied file)."""
        self.n += 1
        version = self.root / f"..2026_12_08_00_00_00.{self.n:09d}"
        version.mkdir()
        (version / "routing.yaml").write_text(text)
        if like is not None:
            st = like.stat()
            os.utime(version / "routing.yaml", ns=(st.st_atime_ns, st.st_mtime_ns))
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(version.name)
        os.replace(tmp, self.root / "..data")
        if not self.path.is_symlink():
            self.path.symlink_to("..data/routing.yaml")
        if self.current is not None:
            (self.current / "routing.yaml").unlink()
            self.current.rmdir()
        self.current = version


def test_a_configmap_update_reloads_the_routing_file(fakes: Fakes, tmp_path: Path) -> None:
    """The kubelet's `..data` swap, reproduced: the gateway reads the routing file through
    the key's symlink and picks up each new version within its one-second poll, also one
    whose file has the same size and modification time as the one before."""
    up = fakes("small")
    cm = ConfigMapFolder(tmp_path / "config")
    base = ["auth: {required: false}", "models:", model_block("small", "small", up.base_url)]
    cm.write("\n".join(base))
    (tmp_path / "gw-home").mkdir()
    gw = GatewayProcess("", tmp_path / "gw-home")
    gw.config_path = cm.path  # the gateway is given the key's path, as in the Deployment
    gw.start()
    try:
        assert _models(gw) >= {"small"} and "mid" not in _models(gw)
        # an update as the kubelet writes it (a fresh file)
        cm.write("\n".join([*base, model_block("mid", "medium", up.base_url)]))
        wait_for(lambda: "mid" in _models(gw))
        # the next version has the same length and keeps the previous file's time: only the
        # file the path now resolves to differs
        old = cm.current
        assert old is not None
        cm.write(
            "\n".join([*base, model_block("big", "medium", up.base_url)]), like=old / "routing.yaml"
        )
        wait_for(lambda: "big" in _models(gw) and "mid" not in _models(gw))
        assert gw.logs().count("config reloaded (file changed)") == 2
    finally:
        gw.close()

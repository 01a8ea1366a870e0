"""Router artifacts: the shipped default loads fast; tampered files are refused, never run."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from router_models import ArtifactError, load_router
from router_models.artifact import DEFAULT_DIR, _sha256


def _copy_default(tmp_path: Path) -> Path:
    dst = tmp_path / "art"
    shutil.copytree(DEFAULT_DIR, dst)
    return dst


def test_default_artifact_loads_and_scores() -> None:
    t0 = time.perf_counter()
    router = load_router("default")
    assert time.perf_counter() - t0 < 5.0  # generous for CI; the benchmark measures the real time
    assert router.has_profile("gemma-2b-it") and router.has_profile("humpback-llama2-70b")
    assert (DEFAULT_DIR / "MODEL_CARD.md").is_file()
    z = router.featurize([{"role": "user", "content": "Prove that sqrt(2) is irrational."}])
    q = router.quality(z, ["gemma-2b-it", "humpback-llama2-70b"])
    assert all(0.0 < v < 1.0 for v in q)
    assert 0.0 <= router.strong_score(z, "humpback-llama2-70b", "gemma-2b-it") <= 1.0
    assert sum(f.stat().st_size for f in DEFAULT_DIR.iterdir()) < 4_000_000


def test_modified_weights_fail_with_checksum_error(tmp_path: Path) -> None:
    art = _copy_default(tmp_path)
    data = bytearray((art / "weights.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (art / "weights.npz").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"weights\.npz: checksum mismatch"):
        load_router(str(art))


class _Boom:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (str(Path(__file__).parent / "PWNED-router-artifact"),))


def test_object_array_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    art = _copy_default(tmp_path)
    marker = Path(__file__).parent / "PWNED-router-artifact"
    marker.unlink(missing_ok=True)
    with np.load(art / "weights.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    evil = np.empty(1, dtype=object)
    evil[0] = _Boom()
    arrays["biases"] = evil
    np.savez(art / "weights.npz", **arrays)  # pickles the object array
    manifest = json.loads((art / "router.json").read_text())
    manifest["files"]["weights.npz"]["sha256"] = _sha256(art / "weights.npz")  # checksum passes
    (art / "router.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="object array"):
        load_router(str(art))
    assert not marker.exists()


def test_bad_manifest_errors_name_the_file(tmp_path: Path) -> None:
    art = _copy_default(tmp_path)
    manifest = json.loads((art / "router.json").read_text())
    manifest["format_version"] = 99
    (art / "router.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"router.json: format_version 99"):
        load_router(str(art))
    (art / "router.json").write_text("{not json")
    with pytest.raises(ArtifactError, match=r"router\.json: not valid JSON"):
        load_router(str(art))
    with pytest.raises(ArtifactError, match="no such artifact directory"):
        load_router(str(tmp_path / "nope"))


def test_wrong_shapes_are_refused(tmp_path: Path) -> None:
    art = _copy_default(tmp_path)
    with np.load(art / "weights.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["biases"] = arrays["biases"][:-1]
    np.savez(art / "weights.npz", **arrays)
    manifest = json.loads((art / "router.json").read_text())
    manifest["files"]["weights.npz"]["sha256"] = _sha256(art / "weights.npz")
    (art / "router.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="do not match"):
        load_router(str(art))

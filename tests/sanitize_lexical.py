"""Drive a sanitizer build of router_models/_lexical.c with generated conversations.

Run by tests/test_lexical_sanitizers.py as
``LD_PRELOAD=<libasan>:<libubsan> python tests/sanitize_lexical.py SO_FILE N SEED``: the
extension built with ``-fsanitize=address,undefined`` (and no recovery) is loaded as
``router_models._lexical`` before anything imports the normal build, so every call the
router makes goes through it. N generated conversations (plain ASCII turns, which take the
C `conversation` pass, and others: unicode, content parts, tool calls, odd types, empty and
very long text, long runs of whitespace and digits) are scored by the shipped router, and
each C entry point is also called directly with edge arguments. Any memory error or
undefined behaviour aborts the process with the sanitizer's report; a clean run prints
``ok <n>`` and exits 0.
"""

from __future__ import annotations

import contextlib
import importlib.util
import random
import string
import sys
from typing import Any

SO, N, SEED = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

spec = importlib.util.spec_from_file_location("router_models._lexical", SO)
assert spec is not None and spec.loader is not None
native = importlib.util.module_from_spec(spec)
sys.modules["router_models._lexical"] = native
spec.loader.exec_module(native)

from router_models import lexical  # noqa: E402
from router_models.artifact import load_router  # noqa: E402

assert lexical._native is native, "the sanitizer build is not the one the router uses"
router = load_router("default")
rng = random.Random(SEED)

PIECES = [
    "def f(x):\n    return x",
    "```python\nprint(1)\n```",
    "\\frac{a}{b} = \\sum_{i=1}^n i",
    "Solve 3x + 4 = 19.",
    "   \t\n\n   ",
    "0123456789" * 7,
    "ÄÖÜ ß ñ 日本語 🙂",
    "\x00\x01\x7f",
    "a",
    "",
]


def text() -> str:
    kind = rng.random()
    if kind < 0.35:
        return " ".join(rng.choice(PIECES) for _ in range(rng.randint(0, 6)))
    if kind < 0.7:
        n = rng.choice([0, 1, 2, 3, 7, 63, 64, 65, 255, 256, 4095, 4096, 70_000])
        alphabet = rng.choice([string.printable, " ", "aA", "\n", string.digits, "é😀a "])
        return "".join(rng.choice(alphabet) for _ in range(n))
    return rng.choice(PIECES) * rng.randint(1, 3000)


def content() -> Any:
    r = rng.random()
    if r < 0.7:
        return text()
    if r < 0.8:
        return None
    if r < 0.9:
        return [{"type": "text", "text": text()} for _ in range(rng.randint(0, 3))]
    return rng.choice([7, 1.5, {"x": 1}, ["a", 1], True])


def message() -> dict[str, Any]:
    m: dict[str, Any] = {}
    if rng.random() < 0.95:
        m["role"] = rng.choice(["user", "assistant", "system", "developer", "tool", "x", ""])
    if rng.random() < 0.95:
        m["content"] = content()
    if rng.random() < 0.05:
        m["tool_calls"] = rng.choice(
            [[], [{"type": "function", "function": {"name": "f", "arguments": text()}}]]
        )
    return m


def tools() -> list[Any] | None:
    if rng.random() < 0.85:
        return None
    return [
        {"type": "function", "function": {"name": "t", "description": text(), "parameters": {}}}
    ]


done = 0
for _ in range(N):
    msgs = [message() for _ in range(rng.choice([0, 1, 1, 2, 3, 5, 12]))]
    # the Python side may refuse a shape; the C side must not misbehave
    with contextlib.suppress(TypeError, ValueError, AttributeError):
        router.score(msgs, tools())
    done += 1

# each entry point directly, at the edges of what it takes
for bits in (1, 8, 18, 24):
    for s in (b"", b"a", b"ab", b" " * 1000, bytes(range(256)) * 4):
        with contextlib.suppress(ValueError, TypeError, OverflowError):
            native.hash_counts(s, bits)
for bad in (0, -1, 40):
    with contextlib.suppress(ValueError, TypeError, OverflowError):
        native.hash_counts(b"abc", bad)
for msgs_any in ([], [{}], [{"role": None}], [1], "x", [{"content": "é"}], [{"role": "user"}]):
    with contextlib.suppress(TypeError, ValueError):
        native.conversation(msgs_any, None)
native.conversation([{"role": "user", "content": "hi"}], [])
print(f"ok {done}")

#!/usr/bin/env python3
"""Write gateway/measure/data/exact_tasks.json: small tasks with one exact answer each.

    .venv/bin/python scripts/make_exact_tasks.py [--n 20] [--seed 23]

Three kinds, `--n` of each, from a fixed seed (the same file on every run): arithmetic (a sum,
a difference or a product of two numbers), counting (a letter in a word, the words of a
sentence) and string manipulation (a word reversed, upper-cased, its first or last letter).
Every prompt asks for the answer alone, so `tollgate bench-model --scored` can grade it by
exact match (gateway/measure/scored.py says how answers are normalised).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "gateway" / "measure" / "data" / "exact_tasks.json"
WORDS = [
    "apple",
    "banana",
    "cherry",
    "garden",
    "window",
    "planet",
    "silver",
    "rocket",
    "castle",
    "orange",
    "yellow",
    "marble",
    "pencil",
    "bottle",
    "candle",
    "forest",
    "guitar",
    "harbor",
    "island",
    "jacket",
    "kitten",
    "ladder",
    "monkey",
    "needle",
    "summer",
    "winter",
    "strawberry",
    "mississippi",
    "balloon",
    "committee",
    "bookkeeper",
    "coffee",
]
ONLY = "Reply with the answer only."


def arithmetic(rng: random.Random) -> dict[str, str]:
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    op = rng.choice("+-*")
    if op == "-" and b > a:
        a, b = b, a
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    return {"kind": "arithmetic", "prompt": f"What is {a} {op} {b}? {ONLY}", "answer": str(value)}


def counting(rng: random.Random) -> dict[str, str]:
    if rng.random() < 0.5:
        word = rng.choice(WORDS)
        letter = rng.choice(sorted(set(word)))
        n = word.count(letter)
        prompt = f"How many times does the letter '{letter}' appear in the word '{word}'? {ONLY}"
        return {"kind": "counting", "prompt": prompt, "answer": str(n)}
    words = rng.sample(WORDS, rng.randint(3, 8))
    sentence = " ".join(words)
    prompt = f"How many words are in this list: {sentence}? {ONLY}"
    return {"kind": "counting", "prompt": prompt, "answer": str(len(words))}


def strings(rng: random.Random) -> dict[str, str]:
    word = rng.choice(WORDS)
    how = rng.choice(("reverse", "upper", "first", "last"))
    if how == "reverse":
        prompt, answer = f"Write the word '{word}' backwards.", word[::-1]
    elif how == "upper":
        prompt, answer = f"Write the word '{word}' in capital letters.", word.upper()
    elif how == "first":
        prompt, answer = f"What is the first letter of the word '{word}'?", word[0]
    else:
        prompt, answer = f"What is the last letter of the word '{word}'?", word[-1]
    return {"kind": "string", "prompt": f"{prompt} {ONLY}", "answer": answer}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=20, help="tasks of each kind (default 20)")
    ap.add_argument("--seed", type=int, default=23)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    # interleaved, so that the first few tasks already cover every kind
    tasks = [make(rng) for _ in range(args.n) for make in (arithmetic, counting, strings)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(tasks, indent=1) + "\n")
    print(f"wrote {len(tasks)} tasks to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

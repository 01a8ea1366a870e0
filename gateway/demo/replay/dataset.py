"""The replayed answers: real answers of four real models to the 805 AlpacaEval instructions.

Each model's file (data/<model>.json.gz, see data/PROVENANCE.md) holds, per instruction, the
answer the model gave and the GPT-4-Turbo judge's preference against the reference answer
(1 = the reference won, 2 = the model won). Quality is `preference - 1`, in [0, 1].

Token counts are estimated from the real text (ceil(chars / 4),
`gateway.accounting.pricing`), and the latency of an answer is simulated from its length:
`ttft_s + completion_tokens / tokens_per_s` for the model's tier, divided by a speed factor
so that a demo runs in seconds.
"""

from __future__ import annotations

import functools
import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from gateway.accounting.pricing import estimate_prompt_tokens, estimate_tokens

DATA_DIR: Final = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True, slots=True)
class Speed:
    """Simulated serving speed of one tier: time to first token and decode tokens/s."""

    ttft_s: float
    tokens_per_s: float


# model -> (tier, speed). The tokens/s of the three local tiers are the `tokens_per_second`
# of one stream (not the batched throughput that the packaged routing file prices); the external
# API's 80 tokens/s is an assumption.
REPLAY_MODELS: Final[dict[str, tuple[str, Speed]]] = {
    "gemma-2b-it": ("small", Speed(0.15, 120.0)),
    "vicuna-13b-v1.5": ("medium", Speed(0.3, 60.0)),
    "humpback-llama2-70b": ("large", Speed(0.6, 30.0)),
    "gpt-3.5-turbo-1106": ("external", Speed(0.4, 80.0)),
}
JUDGE_MODEL: Final = "judge"


@dataclass(frozen=True, slots=True)
class Answer:
    """One recorded answer and its recorded judgment."""

    model: str
    instruction: str
    text: str
    preference: float  # 1..2, GPT-4-Turbo judge vs the gpt4_1106_preview reference

    @property
    def quality(self) -> float:
        return self.preference - 1.0

    @property
    def completion_tokens(self) -> int:
        return estimate_tokens(self.text)


def key(instruction: str) -> str:
    """Lookup key of an instruction: the text with surrounding whitespace removed."""
    return instruction.strip()


def prompt_tokens(instruction: str) -> int:
    """Tokens of a one-message chat with this instruction (the gateway's estimate)."""
    return estimate_prompt_tokens([{"role": "user", "content": instruction}])


def simulated_latency_s(model: str, completion_tokens: int, speed: float = 1.0) -> float:
    """How long `model` takes to produce `completion_tokens`, divided by `speed`."""
    s = REPLAY_MODELS[model][1]
    return (s.ttft_s + completion_tokens / s.tokens_per_s) / max(speed, 1e-9)


class ReplayModel:
    """The recorded answers of one model, looked up by instruction."""

    def __init__(self, name: str, rows: list[dict[str, object]]) -> None:
        self.name = name
        self.tier, self.speed = REPLAY_MODELS[name]
        self.answers: dict[str, Answer] = {}
        for r in rows:
            ins = str(r["instruction"])
            pref = r["preference"]
            assert isinstance(pref, int | float)
            self.answers[key(ins)] = Answer(name, ins, str(r["output"]), float(pref))

    def get(self, instruction: str) -> Answer | None:
        return self.answers.get(key(instruction))

    def __len__(self) -> int:
        return len(self.answers)


@functools.cache
def load_model(name: str) -> ReplayModel:
    if name not in REPLAY_MODELS:
        raise KeyError(f"no replay data for {name!r}; there is: {', '.join(REPLAY_MODELS)}")
    with gzip.open(DATA_DIR / f"{name}.json.gz", "rt", encoding="utf-8") as f:
        return ReplayModel(name, json.load(f))


def load_all() -> dict[str, ReplayModel]:
    return {name: load_model(name) for name in REPLAY_MODELS}


def instructions() -> list[str]:
    """The instructions every replay model has an answer for, in the dataset's order."""
    models = load_all()
    first = next(iter(models.values()))
    return [
        a.instruction
        for a in first.answers.values()
        if all(a.instruction.strip() in m.answers for m in models.values())
    ]

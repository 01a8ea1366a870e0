"""What a request cost: price rates from the routing YAML or the shipped table, and token estimates.

Formulas (all results in USD; ``M = 1_000_000``):

API pricing (``input_per_mtok``, ``cached_input_per_mtok``, ``cache_write_input_per_mtok``,
``output_per_mtok``)::

    # cache reads (cached_tokens) and writes (cache_write_tokens) are subsets of the prompt
    uncached = prompt_tokens - cached_tokens - cache_write_tokens
    cost = ( uncached           * input_per_mtok
           + cached_tokens      * (cached_input_per_mtok if given else input_per_mtok)
           + cache_write_tokens * (cache_write_input_per_mtok if given else input_per_mtok)
           + completion_tokens  * output_per_mtok ) / M

    Every provider's usage is read into those counts (`read_usage`): OpenAI's chat and
    completions (prompt_tokens, prompt_tokens_details.cached_tokens), the Responses API's
    (input_tokens, input_tokens_details.cached_tokens), Anthropic's (input_tokens, which
    leaves out cache_creation_input_tokens and cache_read_input_tokens: the prompt is the
    three together) and DeepSeek's (prompt_cache_hit_tokens).

    A flat per-token price may be given as only one of input_per_mtok / output_per_mtok;
    the missing side is then charged at the same price.

Local pricing (``hardware_usd_per_hour``, ``tokens_per_second``, ``input_ratio``)::

    output_token = hardware_usd_per_hour / 3600 / tokens_per_second   # a second of the box
    input_token  = input_ratio * output_token                         # prefill is cheaper
    cached_token = cached_input_per_mtok / M if given else input_token
    cost = uncached * input_token + cached_tokens * cached_token + completion_tokens * output_token

``tokens_per_second`` is the measured decode throughput of the whole box at its usual load,
so the formula spreads the hardware's hourly cost over the tokens it actually produces.

Token estimates (used only when an upstream reports no usage; the record is then marked
``tokens_estimated``): ``ceil(len(text) / 4)`` per text, the usual English rule of thumb for
BPE vocabularies, plus OpenAI's chat framing overhead of 4 tokens per message and 3 for the
reply primer.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config import ModelConfig, Pricing

PRICE_TABLE_PATH = Path(__file__).resolve().parent / "prices" / "routerarena_cost.json"
_PER_MTOK = 1_000_000.0
_TOKENS_PER_MESSAGE = 4
_REPLY_PRIMER_TOKENS = 3


@dataclass(frozen=True, slots=True)
class Rates:
    """USD per single token."""

    input: float
    cached_input: float
    output: float
    cache_write: float = -1.0  # < 0: at the input price

    def __post_init__(self) -> None:
        if self.cache_write < 0:
            object.__setattr__(self, "cache_write", self.input)


FREE = Rates(0.0, 0.0, 0.0)

# Prompt-cache prices of the shipped table's providers, as multiples of the input price
# (read, write), by name prefix; first match wins. From the providers' pricing pages:
# Anthropic reads 0.1x and writes (5-minute cache) 1.25x; OpenAI reads 0.5x (gpt-4o),
# 0.25x (gpt-4.1, o4-mini), 0.1x (gpt-5), writes free; Gemini 2.x implicit reads 0.25x.
# A model with a `pricing:` block in the routing file uses that block's prices only.
CACHE_MULTIPLIERS: tuple[tuple[str, float, float], ...] = (
    ("claude", 0.1, 1.25),
    ("anthropic/claude", 0.1, 1.25),
    ("gpt-4o", 0.5, 1.0),
    ("gpt-4.1", 0.25, 1.0),
    ("o4-mini", 0.25, 1.0),
    ("gpt-5", 0.1, 1.0),
    ("gemini-2", 0.25, 1.0),
)


def rates(pricing: Pricing | None) -> Rates:
    """Per-token USD rates for a pricing block (all zero for None)."""
    if pricing is None:
        return FREE
    if pricing.hardware_usd_per_hour is not None and pricing.tokens_per_second is not None:
        out = pricing.hardware_usd_per_hour / 3600.0 / pricing.tokens_per_second
        inp = pricing.input_ratio * out
    else:
        in_m = pricing.input_per_mtok
        out_m = pricing.output_per_mtok
        if in_m is None:
            in_m = out_m or 0.0
        if out_m is None:
            out_m = in_m
        inp, out = in_m / _PER_MTOK, out_m / _PER_MTOK
    cached = (
        pricing.cached_input_per_mtok / _PER_MTOK
        if pricing.cached_input_per_mtok is not None
        else inp
    )
    write = (
        pricing.cache_write_input_per_mtok / _PER_MTOK
        if pricing.cache_write_input_per_mtok is not None
        else inp
    )
    return Rates(inp, cached, out, write)


def cost_usd(
    pricing: Pricing | None,
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int = 0,
    cache_write_tokens: int = 0,
) -> float:
    """USD cost of one request (0.0 when the model has no price). See the module docstring."""
    if pricing is None:
        return 0.0
    return cost_at(
        rates(pricing), prompt_tokens, completion_tokens, cached_tokens, cache_write_tokens
    )


def cost_at(
    r: Rates,
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int = 0,
    cache_write_tokens: int = 0,
) -> float:
    """`cost_usd` from per-token rates computed once (`Runtime.rates`): the hot-path form."""
    prompt = max(0, int(prompt_tokens))
    cached = min(max(0, int(cached_tokens)), prompt)
    written = min(max(0, int(cache_write_tokens)), prompt - cached)
    completion = max(0, int(completion_tokens))
    return (
        (prompt - cached - written) * r.input
        + cached * r.cached_input
        + written * r.cache_write
        + completion * r.output
    )


def _int(v: Any) -> int:
    return v if type(v) is int and v > 0 else 0


def read_usage(usage: Any) -> tuple[int, int, int, int] | None:
    """(prompt tokens, completion tokens, cache reads, cache writes) from an upstream's
    `usage` object in any provider's format (see the module docstring); None when it holds
    no token counts. Reads and writes are parts of the prompt."""
    if not isinstance(usage, dict):
        return None
    if "prompt_tokens" in usage:  # OpenAI chat / completions, and the servers that copy it
        d = usage.get("prompt_tokens_details")
        d = d if isinstance(d, dict) else {}
        cached = _int(d.get("cached_tokens")) or _int(usage.get("prompt_cache_hit_tokens"))
        # cache writes: a gateway's own chat answer of an Anthropic model carries them so
        written = _int(d.get("cache_write_tokens")) or _int(
            usage.get("cache_creation_input_tokens")
        )
        prompt, completion = _int(usage["prompt_tokens"]), _int(usage.get("completion_tokens"))
        return prompt, completion, cached, written
    if "input_tokens" not in usage and "output_tokens" not in usage:
        return None
    inp = _int(usage.get("input_tokens"))
    out = _int(usage.get("output_tokens"))
    if "cache_read_input_tokens" in usage or "cache_creation_input_tokens" in usage:
        # Anthropic: input_tokens counts only what is after the last cache breakpoint
        read = _int(usage.get("cache_read_input_tokens"))
        written = _int(usage.get("cache_creation_input_tokens"))
        return inp + read + written, out, read, written
    d = usage.get("input_tokens_details")  # the Responses API: input_tokens has it all
    d = d if isinstance(d, dict) else {}
    return inp, out, _int(d.get("cached_tokens")), _int(d.get("cache_write_tokens"))


def format_usd(value: float) -> str:
    """The x-tollgate-cost-usd header value: fixed point, 12 decimals (1e-12 USD)."""
    return f"{value:.12f}"


@functools.cache
def _price_table() -> dict[str, Pricing]:
    raw = json.loads(PRICE_TABLE_PATH.read_text())
    table: dict[str, Pricing] = {}
    for name, row in raw.items():
        inp = float(row["input_token_price_per_million"])
        price: dict[str, float] = {
            "input_per_mtok": inp,
            "output_per_mtok": float(row["output_token_price_per_million"]),
        }
        for prefix, read, write in CACHE_MULTIPLIERS:
            if name.lower().startswith(prefix):
                price["cached_input_per_mtok"] = inp * read
                price["cache_write_input_per_mtok"] = inp * write
                break
        table[name] = Pricing.model_validate(price)
    return table


@functools.cache
def _folded_table() -> dict[str, Pricing]:
    return {k.lower(): v for k, v in _price_table().items()}


def default_pricing(upstream_model_name: str) -> Pricing | None:
    """Pricing from the shipped table (see gateway/accounting/prices/PROVENANCE.md), or None.

    Looks up the exact name, then case-insensitively, then the part after the last ``/``
    (``openai/gpt-4o`` -> ``gpt-4o``).
    """
    if not upstream_model_name:
        return None
    table = _price_table()
    if upstream_model_name in table:
        return table[upstream_model_name]
    folded = _folded_table()
    name = upstream_model_name.lower()
    if name in folded:
        return folded[name]
    tail = name.rsplit("/", 1)[-1]
    return folded.get(tail)


def resolve_pricing(model: ModelConfig) -> Pricing | None:
    """The YAML ``pricing:`` block, else the table price of the first endpoint's upstream
    model name, else of the public model name."""
    if model.pricing is not None:
        return model.pricing
    for ep in model.endpoints:
        if ep.model:
            found = default_pricing(ep.model)
            if found is not None:
                return found
    return default_pricing(model.name)


def estimate_tokens(text: str) -> int:
    """Cheap token estimate: ceil(len(text) / 4)."""
    if not text:
        return 0
    return (len(text) + 3) // 4


def _content_text(content: Any) -> Iterable[str]:
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, str):
                yield part
            elif isinstance(part, Mapping) and isinstance(part.get("text"), str):
                yield part["text"]


def estimate_prompt_tokens(messages: Any) -> int:
    """Estimate of the prompt tokens of a chat ``messages`` list (or a completions ``prompt``:
    a string or list of strings): text estimate plus 4 tokens per message and 3 for the reply."""
    if isinstance(messages, str):
        return estimate_tokens(messages)
    if not isinstance(messages, list):
        return 0
    total = 0
    chat = False
    for m in messages:
        if isinstance(m, str):
            total += estimate_tokens(m)
            continue
        if type(m) is not dict and not isinstance(m, Mapping):  # ABC check only if needed
            continue
        chat = True
        total += _TOKENS_PER_MESSAGE
        content = m.get("content")
        if type(content) is str:  # the usual turn: no generator for it (runs per request)
            total += (len(content) + 3) // 4
        else:
            for text in _content_text(content):
                total += estimate_tokens(text)
        name = m.get("name")
        if isinstance(name, str):
            total += estimate_tokens(name)
    return total + (_REPLY_PRIMER_TOKENS if chat else 0)

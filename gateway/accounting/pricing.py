"""What a request cost: price rates from the routing YAML or the shipped table, and token estimates.

Formulas (all results in USD; ``M = 1_000_000``):

API pricing (``input_per_mtok``, ``cached_input_per_mtok``, ``cache_write_input_per_mtok``,
``output_per_mtok``)::

    uncached = prompt_tokens - cached_tokens - cache_write_tokens   # both are prompt tokens
    cost = ( uncached        * input_per_mtok
           + cached_tokens   * (cached_input_per_mtok if given else input_per_mtok)
           + cache_write_tokens * (cache_write_input_per_mtok if given else input_per_mtok)
           + completion_tokens * output_per_mtok ) / M

    cached_tokens are prompt-cache reads (OpenAI's prompt_tokens_details.cached_tokens,
    Anthropic's cache_read_input_tokens), cache_write_tokens prompt-cache writes
    (Anthropic's cache_creation_input_tokens, priced above the input price there).

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
    cache_write: float = 0.0


FREE = Rates(0.0, 0.0, 0.0)


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
) -> float:
    """USD cost of one request (0.0 when the model has no price). See the module docstring."""
    if pricing is None:
        return 0.0
    return cost_at(rates(pricing), prompt_tokens, completion_tokens, cached_tokens)


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
    completion = max(0, int(completion_tokens))
    cost = (prompt - cached) * r.input + cached * r.cached_input + completion * r.output
    if cache_write_tokens:
        write = min(max(0, int(cache_write_tokens)), prompt - cached)
        cost += write * (r.cache_write - r.input)
    return cost


def format_usd(value: float) -> str:
    """The x-tollgate-cost-usd header value: fixed point, 12 decimals (1e-12 USD)."""
    return f"{value:.12f}"


@functools.cache
def _price_table() -> dict[str, Pricing]:
    raw = json.loads(PRICE_TABLE_PATH.read_text())
    table: dict[str, Pricing] = {}
    for name, row in raw.items():
        table[name] = Pricing.model_validate(
            {
                "input_per_mtok": float(row["input_token_price_per_million"]),
                "output_per_mtok": float(row["output_token_price_per_million"]),
            }
        )
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

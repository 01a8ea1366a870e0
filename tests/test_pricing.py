"""Cost arithmetic against hand-computed cases, to a fraction of a cent (abs 1e-9 USD)."""

from __future__ import annotations

import hashlib
import json

import pytest

from gateway.accounting.pricing import (
    PRICE_TABLE_PATH,
    cost_usd,
    default_pricing,
    estimate_prompt_tokens,
    estimate_tokens,
    format_usd,
    rates,
    resolve_pricing,
)
from gateway.config import ModelConfig, Pricing

EXACT = 1e-9


def test_api_without_cache() -> None:
    p = Pricing(input_per_mtok=2.5, output_per_mtok=10.0)
    # 1000 * 2.5 / 1e6 = 0.0025 ; 500 * 10 / 1e6 = 0.005 ; total 0.0075
    assert cost_usd(p, 1000, 500) == pytest.approx(0.0075, abs=EXACT)


def test_api_with_cached_price() -> None:
    p = Pricing(input_per_mtok=3.0, cached_input_per_mtok=0.3, output_per_mtok=15.0)
    # uncached 10000 - 8000 = 2000 * 3 / 1e6 = 0.006
    # cached   8000 * 0.3 / 1e6            = 0.0024
    # output   1000 * 15 / 1e6             = 0.015   -> 0.0234
    assert cost_usd(p, 10_000, 1000, cached_tokens=8000) == pytest.approx(0.0234, abs=EXACT)


def test_api_cached_without_cached_price_pays_input_price() -> None:
    p = Pricing(input_per_mtok=1.0, output_per_mtok=2.0)
    # 600 * 1e-6 + 400 * 1e-6 + 100 * 2e-6 = 0.0006 + 0.0004 + 0.0002 = 0.0012
    assert cost_usd(p, 1000, 100, cached_tokens=400) == pytest.approx(0.0012, abs=EXACT)
    assert cost_usd(p, 1000, 100, cached_tokens=400) == pytest.approx(cost_usd(p, 1000, 100))


def test_api_large_request_cent_fraction() -> None:
    p = Pricing(input_per_mtok=1.25, cached_input_per_mtok=0.125, output_per_mtok=10.0)
    # (123_457 - 100_000) * 1.25 = 29_321.25 ; 100_000 * 0.125 = 12_500 ; 7_891 * 10 = 78_910
    # sum 120_731.25 / 1e6 = 0.12073125
    assert cost_usd(p, 123_457, 7_891, 100_000) == pytest.approx(0.12073125, abs=EXACT)


def test_local_hardware_pricing() -> None:
    p = Pricing(hardware_usd_per_hour=0.35, tokens_per_second=120)
    # output token = 0.35 / 3600 / 120 = 0.35 / 432_000 ; input token = 0.1 of that
    # cost = 0.35 / 432_000 * (1000 * 0.1 + 500) = 0.35 * 600 / 432_000 = 0.000486111...
    assert cost_usd(p, 1000, 500) == pytest.approx(0.35 * 600 / 432_000, abs=EXACT)
    assert cost_usd(p, 1000, 500) == pytest.approx(0.00048611111, abs=EXACT)


def test_local_with_cached_tokens() -> None:
    p = Pricing(
        hardware_usd_per_hour=4.8, tokens_per_second=30, input_ratio=0.25, cached_input_per_mtok=0
    )
    # output token = 4.8 / 3600 / 30 = 4.8 / 108_000 = 4.444e-5 ; input token = 1.111e-5
    # uncached 500 * 1.111e-5 = 0.0055556 ; cached 1500 * 0 ; output 300 * 4.444e-5 = 0.0133333
    # = 4.8 * (500 * 0.25 + 300) / 108_000 = 4.8 * 425 / 108_000 = 0.0188888...
    assert cost_usd(p, 2000, 300, cached_tokens=1500) == pytest.approx(
        4.8 * 425 / 108_000, abs=EXACT
    )
    q = Pricing(hardware_usd_per_hour=4.8, tokens_per_second=30, input_ratio=0.25)
    # no cached price: cached tokens pay the input rate -> 4.8 * (2000 * 0.25 + 300) / 108_000
    assert cost_usd(q, 2000, 300, cached_tokens=1500) == pytest.approx(
        4.8 * 800 / 108_000, abs=EXACT
    )


def test_flat_per_token_price() -> None:
    p = Pricing(output_per_mtok=0.2)
    # one price both ways: (1000 + 1000) * 0.2 / 1e6 = 0.0004
    assert cost_usd(p, 1000, 1000) == pytest.approx(0.0004, abs=EXACT)
    assert rates(Pricing(input_per_mtok=0.5)).output == pytest.approx(0.5e-6)


def test_edges() -> None:
    p = Pricing(input_per_mtok=1.0, output_per_mtok=2.0)
    assert cost_usd(None, 1000, 1000) == 0.0
    assert cost_usd(p, 0, 0) == 0.0
    # cached beyond the prompt is clamped to the prompt; negative counts count as 0
    assert cost_usd(p, 100, 0, cached_tokens=500) == pytest.approx(100e-6, abs=EXACT)
    assert cost_usd(p, -5, -5, cached_tokens=-5) == 0.0
    assert format_usd(0.0075) == "0.007500000000"
    assert format_usd(0.35 * 600 / 432_000) == "0.000486111111"


def test_default_prices_from_shipped_table() -> None:
    # with the provider's prompt-cache prices (pricing.CACHE_MULTIPLIERS)
    assert default_pricing("gpt-4o") == Pricing(
        input_per_mtok=2.5,
        output_per_mtok=10.0,
        cached_input_per_mtok=1.25,
        cache_write_input_per_mtok=2.5,
    )
    assert default_pricing("GPT-4o-Mini") == Pricing(
        input_per_mtok=0.15,
        output_per_mtok=0.6,
        cached_input_per_mtok=0.075,
        cache_write_input_per_mtok=0.15,
    )
    assert default_pricing("openai/gpt-3.5-turbo-1106") == Pricing(
        input_per_mtok=1.0, output_per_mtok=2.0
    )
    assert default_pricing("meta-llama/Meta-Llama-3.1-70B-Instruct-Turbo") is not None
    assert default_pricing("no-such-model") is None
    assert default_pricing("") is None
    m = ModelConfig.model_validate(
        {
            "name": "x",
            "tier": "external",
            "endpoints": [{"base_url": "http://h/v1", "model": "gpt-4"}],
        }
    )
    assert resolve_pricing(m) == Pricing(input_per_mtok=10, output_per_mtok=30)


def test_price_table_provenance() -> None:
    raw = PRICE_TABLE_PATH.read_bytes()
    prov = (PRICE_TABLE_PATH.parent / "PROVENANCE.md").read_text()
    assert hashlib.sha256(raw).hexdigest() in prov
    assert "4714a9ad73e897a1241e73a86c9297fed2e871d8" in prov and "Apache-2.0" in prov
    table = json.loads(raw)
    assert len(table) == 45
    for name in table:
        assert default_pricing(name) is not None


def test_token_estimates() -> None:
    # ceil(len / 4)
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcd") == 1
    assert estimate_tokens("abcde") == 2
    assert estimate_tokens("x" * 400) == 100
    msgs = [
        {"role": "system", "content": "x" * 40},  # 4 + 10
        {"role": "user", "content": [{"type": "text", "text": "y" * 8}]},  # 4 + 2
    ]
    assert estimate_prompt_tokens(msgs) == 14 + 6 + 3  # + 3 for the reply primer
    assert estimate_prompt_tokens("z" * 12) == 3  # a completions prompt
    assert estimate_prompt_tokens(["z" * 4, "z" * 8]) == 3
    assert estimate_prompt_tokens(None) == 0
    # an empty turn, a named one, a null content (an assistant's tool call turn)
    named = [{"role": "user", "content": "", "name": "abcdefgh"}, {"role": "assistant"}]
    assert estimate_prompt_tokens(named) == (4 + 0 + 2) + 4 + 3
    assert estimate_prompt_tokens([{"role": "assistant", "content": None}]) == 4 + 3


def test_cache_writes_and_reads_are_priced_for_every_usage_format() -> None:
    from gateway.accounting.pricing import read_usage

    # OpenAI chat: cached_tokens is part of prompt_tokens
    openai_chat = {
        "prompt_tokens": 2000,
        "completion_tokens": 100,
        "prompt_tokens_details": {"cached_tokens": 1536},
    }
    assert read_usage(openai_chat) == (2000, 100, 1536, 0)
    # the Responses API: input_tokens holds the cached ones too
    responses = {
        "input_tokens": 2000,
        "output_tokens": 100,
        "input_tokens_details": {"cached_tokens": 1024},
    }
    assert read_usage(responses) == (2000, 100, 1024, 0)
    # Anthropic: input_tokens leaves out what was written to and read from the cache
    anthropic = {
        "input_tokens": 50,
        "output_tokens": 100,
        "cache_creation_input_tokens": 1200,
        "cache_read_input_tokens": 3000,
    }
    assert read_usage(anthropic) == (4250, 100, 3000, 1200)
    assert read_usage({"prompt_tokens": 10, "prompt_cache_hit_tokens": 8}) == (10, 0, 8, 0)
    assert read_usage({"total_tokens": 3}) is None and read_usage(None) is None
    # Anthropic's prices: $3 / M input, reads $0.30 / M, writes $3.75 / M, output $15 / M
    p = Pricing(
        input_per_mtok=3.0,
        cached_input_per_mtok=0.3,
        cache_write_input_per_mtok=3.75,
        output_per_mtok=15.0,
    )
    # 50 * 3 + 3000 * 0.3 + 1200 * 3.75 + 100 * 15 = 150 + 900 + 4500 + 1500 = 7050 / 1e6
    assert cost_usd(p, 4250, 100, 3000, 1200) == pytest.approx(0.00705, abs=EXACT)
    # without a write price, writes cost what input does: 150 + 900 + 3600 + 1500 = 6150 / 1e6
    plain = Pricing(input_per_mtok=3.0, cached_input_per_mtok=0.3, output_per_mtok=15.0)
    assert cost_usd(plain, 4250, 100, 3000, 1200) == pytest.approx(0.00615, abs=EXACT)


def test_shipped_table_prices_each_providers_prompt_cache() -> None:
    claude = rates(default_pricing("claude-3-7-sonnet-20250219"))
    assert claude.cached_input == pytest.approx(claude.input * 0.1)
    assert claude.cache_write == pytest.approx(claude.input * 1.25)
    gpt4o = rates(default_pricing("gpt-4o"))
    assert gpt4o.cached_input == pytest.approx(gpt4o.input * 0.5)
    assert gpt4o.cache_write == pytest.approx(gpt4o.input)
    old = rates(default_pricing("gpt-3.5-turbo"))  # no prompt caching: reads at input price
    assert old.cached_input == old.input

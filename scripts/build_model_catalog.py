"""Build router_models/model_catalog.json: model families, snapshots, aliases, ratings, prices.

    .venv/bin/python scripts/build_model_catalog.py ../shared/data

Hand-written below: families, the dated snapshots and the default snapshot of each undated alias
(from the vendors' model documentation, as noted per family), aliases (provider, Hugging Face,
Ollama and vendor spellings; a bare Ollama name like `llama3.1` is its `:latest` tag),
parameter counts and tier hints. Copied from the shared data (see its README.md; nothing
fetched): Arena Elo (hard-en), WB_Elo (WildBench), the AlpacaEval 2 length-controlled win rate,
and list prices (RouterArena, LLMRouter). Deterministic: the same inputs give a byte-identical
file.
"""

from __future__ import annotations

import csv
import gzip
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from router_models.identity import display_form, loose_key, params_from_name  # noqa: E402

OUT = ROOT / "router_models" / "model_catalog.json"

# family -> (default snapshot of the undated alias, aliases of the family, note)
FAMILIES: dict[str, tuple[str, list[str], str]] = {
    "gpt-4o": (
        "gpt-4o-2024-08-06",
        [],
        "OpenAI model docs: `gpt-4o` points to gpt-4o-2024-08-06 (since 2024-10-02; before that "
        "to gpt-4o-2024-05-13).",
    ),
    "gpt-4o-mini": ("gpt-4o-mini-2024-07-18", [], "OpenAI: the only gpt-4o-mini snapshot."),
    "gpt-4-turbo": (
        "gpt-4-turbo-2024-04-09",
        [],
        "OpenAI: `gpt-4-turbo` points to gpt-4-turbo-2024-04-09; the 1106/0125 previews are the "
        "same line.",
    ),
    "gpt-4": ("gpt-4-0613", [], "OpenAI: `gpt-4` points to gpt-4-0613."),
    "gpt-3.5-turbo": (
        "gpt-3.5-turbo-0125",
        ["chatgpt-3.5-turbo", "gpt-35-turbo"],
        "OpenAI: `gpt-3.5-turbo` points to gpt-3.5-turbo-0125 (since 2024-02).",
    ),
    "claude-3-5-sonnet": (
        "claude-3-5-sonnet-20240620",
        ["claude-3.5-sonnet", "claude-sonnet-3.5"],
        "Anthropic: the first Claude 3.5 Sonnet snapshot, the one the data names; note that "
        "Anthropic's `claude-3-5-sonnet-latest` later moved to claude-3-5-sonnet-20241022.",
    ),
    "claude-3-opus": ("claude-3-opus-20240229", ["claude-3-opus-latest"], "Anthropic."),
    "claude-3-sonnet": ("claude-3-sonnet-20240229", [], "Anthropic."),
    "claude-3-haiku": ("claude-3-haiku-20240307", [], "Anthropic."),
    "o1-mini": ("o1-mini-2024-09-12", [], "OpenAI: the first o1-mini snapshot."),
    "o1-preview": ("o1-preview-2024-09-12", [], "OpenAI: the only o1-preview snapshot."),
    "chatgpt-4o-latest": (
        "chatgpt-4o-latest-24-09-07",
        [],
        "OpenAI: a moving alias of the ChatGPT model (not gpt-4o); the data names the build of "
        "2024-09-07.",
    ),
    "mistral-7b-instruct": (
        "mistral-7b-instruct-v0.3",
        ["mistral:7b", "mistral:", "mistral", "mistral-7b"],
        "Mistral AI / Ollama: the newest v0.3.",
    ),
}

# id, family, date, aliases, wildbench key, alpaca_eval key, price key, params_b, tier
SPEC: list[dict[str, Any]] = [
    # OpenAI
    {
        "id": "gpt-4o-2024-05-13",
        "family": "gpt-4o",
        "date": "2024-05-13",
        "wb": "gpt-4o-2024-05-13",
        "ae": "gpt-4o-2024-05-13",
        "tier": "frontier",
        "aliases": ["gpt4o(2024-05-13)"],
    },
    {
        "id": "gpt-4o-2024-08-06",
        "family": "gpt-4o",
        "date": "2024-08-06",
        "price": "gpt-4o",
        "tier": "frontier",
    },
    {
        "id": "gpt-4o-2024-11-20",
        "family": "gpt-4o",
        "date": "2024-11-20",
        "price": "gpt-4o",
        "tier": "frontier",
    },
    {
        "id": "gpt-4o-mini-2024-07-18",
        "family": "gpt-4o-mini",
        "date": "2024-07-18",
        "wb": "gpt-4o-mini-2024-07-18",
        "ae": "gpt-4o-mini-2024-07-18",
        "price": "gpt-4o-mini",
        "tier": "large",
    },
    {
        "id": "gpt-4-turbo-2024-04-09",
        "family": "gpt-4-turbo",
        "date": "2024-04-09",
        "wb": "gpt-4-turbo-2024-04-09",
        "ae": "gpt-4-turbo-2024-04-09",
        "price": "gpt-4-turbo",
        "tier": "frontier",
    },
    {
        "id": "gpt-4-0125-preview",
        "family": "gpt-4-turbo",
        "date": "2024-01-25",
        "wb": "gpt-4-0125-preview",
        "tier": "frontier",
        "aliases": ["gpt-4-turbo-preview"],
    },
    {
        "id": "gpt-4-1106-preview",
        "family": "gpt-4-turbo",
        "date": "2023-11-06",
        "ae": "gpt4_1106_preview",
        "price": "gpt-4-1106-preview",
        "tier": "frontier",
    },
    {
        "id": "gpt-4-0613",
        "family": "gpt-4",
        "date": "2023-06-13",
        "ae": "gpt4_0613",
        "price": "gpt-4",
        "tier": "frontier",
    },
    {
        "id": "gpt-4-0314",
        "family": "gpt-4",
        "date": "2023-03-14",
        "ae": "gpt4_0314",
        "tier": "frontier",
    },
    {
        "id": "gpt-3.5-turbo-0301",
        "family": "gpt-3.5-turbo",
        "date": "2023-03-01",
        "ae": "gpt-3.5-turbo-0301",
        "tier": "large",
    },
    {"id": "gpt-3.5-turbo-0613", "family": "gpt-3.5-turbo", "date": "2023-06-13", "tier": "large"},
    {
        "id": "gpt-3.5-turbo-16k-0613",
        "date": "2023-06-13",
        "ae": "gpt-3.5-turbo-16k-0613",
        "aliases": ["gpt-3.5-turbo-16k"],
        "tier": "large",
    },
    {
        "id": "gpt-3.5-turbo-1106",
        "family": "gpt-3.5-turbo",
        "date": "2023-11-06",
        "ae": "gpt-3.5-turbo-1106",
        "price": "gpt-3.5-turbo-1106",
        "tier": "large",
    },
    {
        "id": "gpt-3.5-turbo-0125",
        "family": "gpt-3.5-turbo",
        "date": "2024-01-25",
        "wb": "gpt-3.5-turbo-0125",
        "price": "gpt-3.5-turbo",
        "tier": "large",
    },
    {"id": "gpt-3.5-turbo-instruct", "ae": "gpt35_turbo_instruct", "tier": "large"},
    {"id": "text-davinci-001", "ae": "text_davinci_001"},
    {"id": "text-davinci-003", "ae": "text_davinci_003"},
    {"id": "o1-mini-2024-09-12", "family": "o1-mini", "date": "2024-09-12", "tier": "frontier"},
    {
        "id": "o1-preview-2024-09-12",
        "family": "o1-preview",
        "date": "2024-09-12",
        "tier": "frontier",
    },
    {
        "id": "chatgpt-4o-latest-24-09-07",
        "family": "chatgpt-4o-latest",
        "date": "2024-09-07",
        "tier": "frontier",
    },
    # Anthropic
    {
        "id": "claude-3-5-sonnet-20240620",
        "family": "claude-3-5-sonnet",
        "date": "2024-06-20",
        "wb": "claude-3-5-sonnet-20240620",
        "ae": "claude-3-5-sonnet-20240620",
        "price": "anthropic/claude-3.5-sonnet",
        "tier": "frontier",
    },
    {
        "id": "claude-3-5-sonnet-20241022",
        "family": "claude-3-5-sonnet",
        "date": "2024-10-22",
        "price": "anthropic/claude-3.5-sonnet",
        "tier": "frontier",
        "aliases": ["claude-3-5-sonnet-latest", "claude-3.5-sonnet-latest"],
    },
    {
        "id": "claude-3-opus-20240229",
        "family": "claude-3-opus",
        "date": "2024-02-29",
        "wb": "claude-3-opus-20240229",
        "ae": "claude-3-opus-20240229",
        "tier": "frontier",
    },
    {
        "id": "claude-3-sonnet-20240229",
        "family": "claude-3-sonnet",
        "date": "2024-02-29",
        "wb": "claude-3-sonnet-20240229",
        "ae": "claude-3-sonnet-20240229",
        "tier": "large",
    },
    {
        "id": "claude-3-haiku-20240307",
        "family": "claude-3-haiku",
        "date": "2024-03-07",
        "wb": "claude-3-haiku-20240307",
        "price": "claude-3-haiku-20240307",
        "tier": "large",
    },
    {
        "id": "claude-3-7-sonnet-20250219",
        "date": "2025-02-19",
        "price": "claude-3-7-sonnet-20250219",
        "tier": "frontier",
    },
    {"id": "claude-2.1", "ae": "claude-2.1", "tier": "large"},
    {"id": "claude-2", "ae": "claude-2", "tier": "large", "aliases": ["claude-2.0"]},
    {"id": "claude", "ae": "claude", "tier": "large", "aliases": ["claude-1"]},
    {"id": "claude-instant-1.2", "ae": "claude-instant-1.2", "tier": "medium"},
    # Google
    {
        "id": "gemini-1.5-pro",
        "wb": "gemini-1.5-pro",
        "tier": "frontier",
        "aliases": ["gemini-1.5-pro-001"],
    },
    {
        "id": "gemini-1.5-flash",
        "wb": "gemini-1.5-flash",
        "tier": "large",
        "aliases": ["gemini-1.5-flash-001"],
    },
    {"id": "gemini-pro", "ae": "gemini-pro", "tier": "large", "aliases": ["gemini-1.0-pro"]},
    {
        "id": "gemma-2b-it",
        "wb": "gemma-2b-it",
        "ae": "gemma-2b-it",
        "params_b": 2.5,
        "aliases": ["gemma:2b"],
    },
    {
        "id": "gemma-7b-it",
        "wb": "gemma-7b-it",
        "ae": "gemma-7b-it",
        "params_b": 8.5,
        "aliases": ["gemma:7b", "gemma:", "gemma"],
    },
    {
        "id": "gemma-2-9b-it",
        "wb": "gemma-2-9b-it",
        "dc": "gemma-2-9b-it",
        "params_b": 9.2,
        "aliases": ["gemma2:9b", "gemma2:", "gemma2"],
    },
    {
        "id": "gemma-2-27b-it",
        "wb": "gemma-2-27b-it@together",
        "params_b": 27.2,
        "aliases": ["gemma2:27b"],
    },
    {"id": "gemma-2-2b-it", "wb": "gemma-2-2b-it", "params_b": 2.6, "aliases": ["gemma2:2b"]},
    {"id": "codegemma-7b", "dc": "codegemma-7b", "params_b": 8.5, "aliases": ["codegemma:7b"]},
    {"id": "gemini-1.5-pro-002", "tier": "frontier", "aliases": ["gemini-1.5-pro-latest"]},
    {"id": "gemini-1.5-flash-002", "tier": "large", "aliases": ["gemini-1.5-flash-latest"]},
    # Meta
    {
        "id": "llama-3.1-8b-instruct",
        "ae": "Meta-Llama-3.1-8B-Instruct-Turbo",
        "dc": "llama-3.1-8b-instruct",
        "params_b": 8.0,
        "aliases": [
            "llama3.1:8b",
            "llama3.1:",
            "llama3.1",
            "meta-llama-3.1-8b-instruct-turbo",
            "llama-3-1-8b-instruct",
            "llama3.1-8b-instruct",
        ],
    },
    {
        "id": "llama-3.1-70b-instruct",
        "ae": "Meta-Llama-3.1-70B-Instruct-Turbo",
        "price": "meta-llama/Meta-Llama-3.1-70B-Instruct-Turbo",
        "params_b": 70.6,
        "aliases": [
            "llama3.1:70b",
            "meta-llama-3.1-70b-instruct-turbo",
            "llama-3-1-70b-instruct",
            "llama3.1-70b-instruct",
        ],
    },
    {
        "id": "llama-3.1-405b-instruct",
        "ae": "Meta-Llama-3.1-405B-Instruct-Turbo",
        "price": "llama-3-1-405b-instruct",
        "params_b": 405.0,
        "aliases": [
            "llama3.1:405b",
            "meta-llama-3.1-405b-instruct-turbo",
            "llama-3.1-405b-inst-fp8",
            "llama-3.1-405b-inst",
            "llama-3-1-405b-instruct",
        ],
    },
    {
        "id": "llama-3.3-70b-instruct",
        "price": "llama-3-3-70b-instruct",
        "params_b": 70.6,
        "aliases": ["llama3.3:70b", "llama3.3:", "llama3.3", "llama-3-3-70b-instruct"],
    },
    {
        "id": "llama-3-8b-instruct",
        "wb": "Meta-Llama-3-8B-Instruct",
        "ae": "Meta-Llama-3-8B-Instruct",
        "price": "meta-llama/llama-3-8b-instruct",
        "params_b": 8.0,
        "aliases": ["llama3:8b", "llama3:", "llama3"],
    },
    {
        "id": "llama-3-70b-instruct",
        "wb": "Meta-Llama-3-70B-Instruct",
        "ae": "Meta-Llama-3-70B-Instruct",
        "price": "meta-llama/Meta-Llama-3-70B-Instruct-Turbo",
        "params_b": 70.6,
        "aliases": ["llama3:70b", "llama-3-70b-chat", "llama-3-70b-instruct-turbo"],
    },
    {
        "id": "llama-2-70b-chat",
        "wb": "Llama-2-70b-chat-hf",
        "ae": "llama-2-70b-chat-hf",
        "params_b": 69.0,
        "aliases": ["llama2:70b"],
    },
    {
        "id": "llama-2-13b-chat",
        "ae": "llama-2-13b-chat-hf",
        "params_b": 13.0,
        "aliases": ["llama2:13b"],
    },
    {
        "id": "llama-2-7b-chat",
        "wb": "Llama-2-7b-chat-hf",
        "ae": "llama-2-7b-chat-hf",
        "params_b": 6.7,
        "aliases": ["llama2:7b", "llama2:", "llama2"],
    },
    {
        "id": "llama-3.2-3b-instruct",
        "price": "llama-3-2-3b-instruct",
        "params_b": 3.2,
        "aliases": ["llama3.2:3b", "llama3.2:", "llama3.2", "llama-3-2-3b-instruct"],
    },
    {
        "id": "llama-3.2-1b-instruct",
        "price": "llama-3-2-1b-instruct",
        "params_b": 1.2,
        "aliases": ["llama3.2:1b", "llama-3-2-1b-instruct"],
    },
    {"id": "gemma-3-270m-it", "params_b": 0.27, "aliases": ["gemma3:270m"]},
    {"id": "humpback-llama2-70b", "ae": "humpback-llama2-70b", "params_b": 69.0},
    {
        "id": "llama-3.3-nemotron-super-49b-v1",
        "dc": "llama-3.3-nemotron-super-49b-v1",
        "params_b": 49.9,
    },
    {
        "id": "llama-3.1-nemotron-51b-instruct",
        "dc": "llama-3.1-nemotron-51b-instruct",
        "params_b": 51.5,
    },
    {"id": "llama3-chatqa-1.5-70b", "dc": "llama3-chatqa-1.5-70b", "params_b": 70.6},
    {"id": "llama3-chatqa-1.5-8b", "dc": "llama3-chatqa-1.5-8b", "params_b": 8.0},
    # Mistral AI
    {
        "id": "mixtral-8x7b-instruct-v0.1",
        "wb": "Mixtral-8x7B-Instruct-v0.1",
        "ae": "Mixtral-8x7B-Instruct-v0.1",
        "price": "open-mixtral-8x7b",
        "params_b": 46.7,
        "aliases": [
            "mixtral:8x7b",
            "mixtral:",
            "mixtral",
            "mixtral-8x7b-instruct",
            "open-mixtral-8x7b",
        ],
    },
    {
        "id": "mixtral-8x22b-instruct-v0.1",
        "ae": "Mixtral-8x22B-Instruct-v0.1",
        "params_b": 141.0,
        "aliases": ["mixtral:8x22b", "open-mixtral-8x22b"],
    },
    {"id": "mistral-7b-instruct-v0.1", "family": "mistral-7b-instruct", "params_b": 7.2},
    {
        "id": "mistral-7b-instruct-v0.2",
        "family": "mistral-7b-instruct",
        "wb": "Mistral-7B-Instruct-v0.2",
        "ae": "Mistral-7B-Instruct-v0.2",
        "params_b": 7.2,
    },
    {
        "id": "mistral-7b-instruct-v0.3",
        "family": "mistral-7b-instruct",
        "ae": "Mistral-7B-Instruct-v0.3",
        "dc": "mistral-7b-instruct-v0.3",
        "params_b": 7.2,
    },
    {
        "id": "mistral-large-2402",
        "wb": "mistral-large-2402",
        "ae": "mistral-large-2402",
        "tier": "frontier",
    },
    {
        "id": "mistral-large-2",
        "wb": "Mistral-Large-2",
        "params_b": 123.0,
        "aliases": ["mistral-large-2407", "mistral-large:123b"],
    },
    {
        "id": "mistral-nemo-instruct-2407",
        "wb": "Mistral-Nemo-Instruct-2407",
        "price": "open-mistral-nemo",
        "params_b": 12.2,
        "aliases": ["mistral-nemo:12b", "mistral-nemo:", "open-mistral-nemo"],
    },
    {"id": "mistral-medium", "ae": "mistral-medium", "price": "mistral-medium", "tier": "large"},
    {
        "id": "openhermes-2.5-mistral-7b",
        "ae": "OpenHermes-2.5-Mistral-7B",
        "params_b": 7.2,
        "aliases": ["openhermes:7b"],
    },
    {
        "id": "command-r",
        "wb": "command-r",
        "params_b": 35.0,
        "aliases": ["c4ai-command-r-v01", "command-r-v01"],
    },
    {"id": "deepseek-v2-chat", "wb": "deepseekv2-chat"},
    # Qwen
    {"id": "qwen2.5-72b-instruct", "params_b": 72.7, "aliases": ["qwen2.5:72b"]},
    {"id": "qwen2.5-32b-instruct", "params_b": 32.5, "aliases": ["qwen2.5:32b"]},
    {
        "id": "qwen2.5-7b-instruct",
        "dc": "qwen2.5-7b-instruct",
        "params_b": 7.6,
        "aliases": ["qwen2.5:7b", "qwen2.5:", "qwen2.5"],
    },
    {"id": "qwen2.5-3b-instruct", "params_b": 3.1, "aliases": ["qwen2.5:3b"]},
    {
        "id": "qwen2-72b-instruct",
        "wb": "Qwen2-72B-Instruct",
        "ae": "Qwen2-72B-Instruct",
        "params_b": 72.7,
        "aliases": ["qwen2:72b"],
    },
    {"id": "qwen2-7b-instruct", "params_b": 7.6, "aliases": ["qwen2:7b", "qwen2:", "qwen2"]},
    {
        "id": "qwen1.5-72b-chat",
        "wb": "Qwen1.5-72B-Chat-greedy",
        "ae": "Qwen1.5-72B-Chat",
        "params_b": 72.0,
        "aliases": ["qwen:72b"],
    },
    {
        "id": "qwen1.5-7b-chat",
        "wb": "Qwen1.5-7B-Chat@together",
        "ae": "Qwen1.5-7B-Chat",
        "params_b": 7.7,
        "aliases": ["qwen:7b"],
    },
    {"id": "qwen-14b-chat", "ae": "Qwen-14B-Chat", "params_b": 14.2},
    # other
    {"id": "vicuna-13b-v1.5", "ae": "vicuna-13b-v1.5", "params_b": 13.0, "aliases": ["vicuna:13b"]},
    {
        "id": "vicuna-7b-v1.5",
        "ae": "vicuna-7b-v1.5",
        "params_b": 6.7,
        "aliases": ["vicuna:7b", "vicuna:"],
    },
    {"id": "phi-2", "ae": "phi-2", "params_b": 2.7, "aliases": ["phi:2.7b", "phi:", "phi"]},
    {"id": "phi-2-sft", "ae": "phi-2-sft", "params_b": 2.7},
    {"id": "alpaca-farm-ppo-human", "ae": "alpaca-farm-ppo-human", "params_b": 7.0},
    {"id": "alpaca-farm-ppo-sim-gpt4-20k", "ae": "alpaca-farm-ppo-sim-gpt4-20k", "params_b": 7.0},
    {"id": "jina-chat", "ae": "jina-chat"},
    {
        "id": "dbrx-instruct",
        "wb": "dbrx-instruct@together",
        "ae": "dbrx-instruct",
        "params_b": 132.0,
    },
]

# AlpacaEval rows not imported: per-run variants and names whose snapshot is ambiguous.
AE_SKIP = {"gpt4", "cohere", "gpt4_gamed", "example", "gpt4_1106_preview"}
PRICE_DCROUTER = "ulab-uiuc/LLMRouter@4e7a796942ce26e9d5f2b93191c7c2585c99c2e3 default_llm.json"
PRICE_RA = "RouteWorks/RouterArena@4714a9ad73e897a1241e73a86c9297fed2e871d8 routerarena_cost.json"


def _tier(params_b: float | None) -> str | None:
    if params_b is None:
        return None
    return "small" if params_b <= 10 else "medium" if params_b <= 40 else "large"


def build(shared: Path, profiles: list[str]) -> dict[str, Any]:
    wb = json.loads((shared / "leaderboard" / "wildbench_stats.json").read_text())
    with open(shared / "alpaca_eval" / "leaderboard.csv", newline="") as f:
        ae = {r[""]: r for r in csv.DictReader(f)}
    ra = json.loads((shared / "prices" / "routerarena_cost.json").read_text())
    with gzip.open(shared / "dcrouter" / "default_llm.json.gz", "rt") as f:
        dc = json.load(f)

    specs = [dict(s) for s in SPEC]
    claimed_wb = {s["wb"] for s in specs if "wb" in s}
    claimed_ae = {s["ae"] for s in specs if "ae" in s} | AE_SKIP
    known = {loose_key(s["id"]) for s in specs} | {
        loose_key(a) for s in specs for a in s.get("aliases", [])
    }

    def add(spec: dict[str, Any]) -> None:
        k = loose_key(spec["id"])
        if k not in known:
            known.add(k)
            specs.append(spec)

    for key in sorted(wb):
        if key not in claimed_wb:
            add({"id": display_form(key), "wb": key})
    for key in sorted(ae):
        row = ae[key]
        skip = key.endswith(("_verbose", "_concise")) or key in claimed_ae
        if not skip and (row["mode"] != "community" or key in profiles):
            add({"id": display_form(key), "ae": key})
    family_keys = {loose_key(f) for f in FAMILIES} | {
        loose_key(a) for _, aliases, _ in FAMILIES.values() for a in aliases
    }
    claimed_price = {s["price"] for s in specs if "price" in s}
    for key in sorted(ra):  # priced models not named above: a price is something known
        if key not in claimed_price and loose_key(key) not in family_keys:
            add({"id": display_form(key), "price": key})
    for p in profiles:  # every profile of the shipped artifact gets an entry (anchors for priors)
        add({"id": display_form(p), "ae": p} if p in ae else {"id": display_form(p)})

    models: dict[str, Any] = {}
    for s in sorted(specs, key=lambda s: s["id"]):
        ratings: dict[str, float] = {}
        leaderboard: dict[str, str] = {}
        if "wb" in s:
            row = wb[s["wb"]]
            leaderboard["wildbench"] = s["wb"]
            if "Arena Elo (hard-en) - latest" in row:
                ratings["arena_elo_hard_en"] = float(row["Arena Elo (hard-en) - latest"])
            if "WB_Elo" in row:
                ratings["wb_elo"] = round(float(row["WB_Elo"]), 2)
        if "ae" in s and s["ae"] in ae:
            leaderboard["alpaca_eval"] = s["ae"]
            lc = ae[s["ae"]]["length_controlled_winrate"]
            if lc:
                ratings["ae2_lc"] = round(float(lc), 3)
        price = None
        if "dc" in s:
            d = dc[s["dc"]]
            price = {"input": d["input_price"], "output": d["output_price"], "from": PRICE_DCROUTER}
        elif s.get("price") in ra:
            r = ra[s["price"]]
            price = {
                "input": r["input_token_price_per_million"],
                "output": r["output_token_price_per_million"],
                "from": f"{PRICE_RA} [{s['price']}]",
            }
        params = s.get("params_b")
        if params is None:
            params = params_from_name(s["id"])
        aliases = sorted({a for a in s.get("aliases", [])} | {v for v in leaderboard.values()})
        aliases = [a for a in aliases if a != s["id"]]
        entry: dict[str, Any] = {
            "family": s.get("family"),
            "date": s.get("date"),
            "aliases": aliases,
            "leaderboard": leaderboard,
            "ratings": ratings,
            "params_b": params,
            "tier": s.get("tier") or _tier(params),
            "price_per_mtok": price,
        }
        models[s["id"]] = {k: v for k, v in entry.items() if v not in (None, [], {})}

    families = {
        name: {"default": d, "aliases": sorted(a), "note": note}
        for name, (d, a, note) in sorted(FAMILIES.items())
    }
    for name, fam in families.items():
        assert fam["default"] in models, name
    for m in models.values():
        if "family" in m:
            families.setdefault(m["family"], {"default": None, "aliases": [], "note": ""})
    # every matching key must name exactly one thing
    owner: dict[str, str] = {}
    for mid, m in models.items():
        for n in [mid, *m.get("aliases", [])]:
            prev = owner.setdefault(loose_key(n), mid)
            assert prev == mid, f"{n!r} of {mid} collides with {prev}"
    for name, fam in families.items():
        for n in [name, *fam["aliases"]]:
            prev = owner.setdefault(loose_key(n), f"family {name}")
            assert prev == f"family {name}", f"family alias {n!r} collides with {prev}"
    return {
        "format": "tollgate-model-catalog",
        "format_version": 1,
        "built_by": "scripts/build_model_catalog.py (hand-written families and aliases + the "
        "copied public data below)",
        "provenance": {
            "families, snapshots, default snapshots, aliases, params_b, tier": "hand-written "
            "in scripts/build_model_catalog.py from the vendors' public model documentation "
            "(OpenAI, Anthropic, Google, Meta, Mistral AI, Qwen model pages and Ollama's "
            "library tags); tier is a coarse hint: small <= 10B, medium <= 40B, large, frontier",
            "ratings.arena_elo_hard_en": "Chatbot Arena Elo on hard English prompts, the "
            "`Arena Elo (hard-en) - latest` column of allenai/WildBench@"
            "d6b8dcaf377d173d031980f97c16e1a82618c03d leaderboard/data_dir/"
            "all_stat_wildbench.-1.json (Apache-2.0)",
            "ratings.wb_elo": "`WB_Elo` of the same WildBench file",
            "ratings.ae2_lc": "AlpacaEval 2 length-controlled win rate (%), "
            "tatsu-lab/alpaca_eval@cd543a149df89434d8a54582c0151c0b945c3d20 leaderboard "
            "(data CC BY-NC 4.0)",
            "price_per_mtok": "USD per million input/output tokens, from the file named in "
            "`from`: RouteWorks/RouterArena routerarena_cost.json (Apache-2.0) or "
            "ulab-uiuc/LLMRouter default_llm.json (MIT)",
            "leaderboard": "the model's key in each leaderboard file",
        },
        "families": families,
        "models": models,
    }


def main(argv: list[str]) -> int:
    shared = Path(argv[0]) if argv else ROOT.parent / "shared" / "data"
    manifest = json.loads(
        (ROOT / "router_models" / "artifacts" / "default" / "router.json").read_text()
    )
    doc = build(shared, list(manifest["profiles"]))
    OUT.write_text(json.dumps(doc, indent=1, sort_keys=False, ensure_ascii=False) + "\n")
    print(f"wrote {OUT}: {len(doc['models'])} models, {len(doc['families'])} families")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

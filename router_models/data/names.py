"""Canonical model identities: every data source's model name -> one canonical name.

The explicit table lives in `names.json` beside this file (written by `build.py` from the
rule below plus the hand-written overrides, then committed); readers (the loaders here, an
alias resolver) only read the JSON. Canonical: lowercase, no org/provider prefix or serving
suffix (`@together`, `-hf`), dots in version numbers, the dated snapshot kept where the data
names one. Base models (not instruct/chat) stay separate identities.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

NAMES_FILE = Path(__file__).resolve().parent / "names.json"

# Names the rule below would get wrong, or that need a decision written down.
OVERRIDES = {
    "gpt4_1106_preview": "gpt-4-1106-preview",
    "gpt35_turbo_instruct": "gpt-3.5-turbo-instruct",
    "text_davinci_001": "text-davinci-001",
    "text_davinci_003": "text-davinci-003",
    "Llama-3.1-405B-Inst-fp8": "llama-3.1-405b-instruct",
    "Llama-3.1-405B-Inst@sambanova": "llama-3.1-405b-instruct",
    "Qwen1.5-72B-Chat-greedy": "qwen1.5-72b-chat",
    "c4ai-command-r-v01": "command-r-v01",
    "Mistral-7B-v0.2-hf": "mistral-7b-v0.2",
    "deepseekv2-chat": "deepseek-v2-chat",
    "dbrx-instruct@together": "dbrx-instruct",
    "meta-llama/Meta-Llama-3.1-70B-Instruct-Turbo": "llama-3.1-70b-instruct",
    "meta-llama/Meta-Llama-3-70B-Instruct-Turbo": "llama-3-70b-instruct",
    "meta-llama/Llama-3-70b-chat-hf": "llama-3-70b-instruct",
    "meta-llama/llama-3-8b-instruct": "llama-3-8b-instruct",
    "mistralai/mixtral-8x7b-instruct": "mixtral-8x7b-instruct-v0.1",
    "open-mixtral-8x7b": "mixtral-8x7b-instruct-v0.1",
    "anthropic/claude-3.5-sonnet": "claude-3-5-sonnet-20240620",
    "llama-3-1-8b-instruct": "llama-3.1-8b-instruct",
    "llama-3-1-405b-instruct": "llama-3.1-405b-instruct",
    "llama-3-3-70b-instruct": "llama-3.3-70b-instruct",
}

# Variants that are not the same model but stand in for it in one source, by decision.
VARIANTS = {
    "alpaca_eval": {
        # Mixtral asked to "be concise": the only AlpacaEval judgment of Mixtral; used as its
        # chat data (its win rate is lower than plain Mixtral's would be; the prompt-to-prompt
        # pattern is what the router learns from it).
        "Mixtral-8x7B-Instruct-v0.1_concise": "mixtral-8x7b-instruct-v0.1",
    }
}


def canonical_rule(name: str) -> str:
    """The naming rule: lowercase, no org prefix or provider suffix, dotted versions."""
    if name in OVERRIDES:
        return OVERRIDES[name]
    n = name.split("/")[-1]
    n = n.split("@")[0]
    n = n.lower()
    n = re.sub(r"^meta-llama-", "llama-", n)
    n = re.sub(r"(\d)_(\d)", r"\1.\2", n)  # Llama-3_1 -> llama-3.1
    n = re.sub(r"-hf$", "", n)
    n = re.sub(r"-(?:chat)-hf$", "-chat", n)
    return n


def build_table(names_by_source: dict[str, list[str]]) -> dict[str, Any]:
    aliases: dict[str, str] = {}
    for names in names_by_source.values():
        for n in names:
            aliases[n] = canonical_rule(n)
    for n in OVERRIDES:
        aliases.setdefault(n, OVERRIDES[n])
    return {
        "about": "data name -> canonical model identity (router_models/data/names.py); "
        "`variants` are stand-ins used only for the named source, not aliases",
        "aliases": dict(sorted(aliases.items())),
        "variants": VARIANTS,
    }


@lru_cache(maxsize=1)
def _table() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(NAMES_FILE.read_text())
    return doc


def canonical(name: str, source: str | None = None) -> str:
    """Canonical identity of `name` as `source` names it (the table, else the rule)."""
    t = _table()
    if source is not None and name in t["variants"].get(source, {}):
        return str(t["variants"][source][name])
    return str(t["aliases"].get(name, canonical_rule(name)))

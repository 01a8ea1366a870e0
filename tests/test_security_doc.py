"""SECURITY.md stays true: every `server:` limit of the config model is in its table with the
default the gateway really uses, and so is every other bound the page quotes in a table
(cache, responses, store). A new limit, or a changed default, fails here until the page says
so."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from gateway.config import RoutingConfig, ServerConfig

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "SECURITY.md"
# `| \`section.field\` | <default> ...|`: the default is the cell's first word
ROW = re.compile(r"^\|\s*`([a-z_]+)\.([a-z_]+)`[^|]*\|\s*([^\s|]+)", re.M)


def _rows() -> dict[str, str]:
    return {f"{s}.{f}": v.rstrip(":,") for s, f, v in ROW.findall(DOC.read_text())}


def _shown(value: Any) -> str:
    return str(value)  # ints as digits, floats with their point, None and booleans by name


def _section(name: str) -> BaseModel:
    section = getattr(RoutingConfig.model_fields[name], "default", None)
    assert isinstance(section, BaseModel), name
    return section


def test_every_server_limit_is_documented_with_its_default() -> None:
    rows = _rows()
    defaults = ServerConfig()
    missing = [f for f in ServerConfig.model_fields if f"server.{f}" not in rows]
    assert not missing, f"SECURITY.md's limits table lacks server.{missing}"
    wrong = {
        f: (rows[f"server.{f}"], _shown(getattr(defaults, f)))
        for f in ServerConfig.model_fields
        if rows[f"server.{f}"] != _shown(getattr(defaults, f))
    }
    assert not wrong, f"SECURITY.md (documented, true) defaults differ: {wrong}"


def test_every_other_quoted_bound_is_the_true_default() -> None:
    rows = {k: v for k, v in _rows().items() if not k.startswith("server.")}
    assert len(rows) >= 10  # cache, responses and store bounds are in tables
    wrong = {}
    for name, shown in rows.items():
        section, field = name.split(".")
        assert field in type(_section(section)).model_fields, f"SECURITY.md names no field {name}"
        true = _shown(getattr(_section(section), field))
        if shown != true:
            wrong[name] = (shown, true)
    assert not wrong, f"SECURITY.md (documented, true) defaults differ: {wrong}"


def test_shipped_routing_file_server_limits_match_the_defaults() -> None:
    """The page says the packaged routing file sets the model's own defaults."""
    shipped = yaml.safe_load((ROOT / "gateway/defaults/routing.yaml").read_text())["server"]
    defaults = ServerConfig()
    differ = {k: (v, getattr(defaults, k)) for k, v in shipped.items() if getattr(defaults, k) != v}
    assert not differ, f"gateway/defaults/routing.yaml server: (file, model) {differ}"

"""`bench-model --write`: set one model's `pricing.tokens_per_second` in the routing file.

Only the bytes of that one value change, and a comment giving the date and the command is
put at the end of its line (replacing the comment an earlier `--write` left there); every
other byte of the file stays as it was. The value is found by position in the YAML node
tree (`yaml.compose`), so block and flow style (`pricing: {..., tokens_per_second: 30}`)
both work, and the result is parsed again before it is written: a file that would not load
is never written.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

from gateway.config import ConfigError, parse_config

COMMENT_TAG = "# measured "
_OUR_COMMENT = re.compile(r"\s*# measured \d{4}-\d{2}-\d{2} by: tollgate bench-model.*$")


class RewriteError(ValueError):
    """The value cannot be rewritten; the message says why and what to do."""


def _child(node: yaml.Node, key: str) -> yaml.Node | None:
    if not isinstance(node, yaml.MappingNode):
        return None
    for k, v in node.value:
        if isinstance(k, yaml.ScalarNode) and k.value == key:
            return v
    return None


def format_tps(tps: float) -> str:
    return f"{tps:.2f}" if tps < 10 else f"{tps:.1f}"


def rewrite_tokens_per_second(text: str, model: str, tps: float, comment: str) -> str:
    """`text` with `model`'s tokens_per_second set to `tps` and `comment` at the end of its
    line. Raises RewriteError when the model or its local pricing is not in the file."""
    if not (tps > 0 and tps != float("inf")):
        raise RewriteError(f"tokens_per_second must be a positive number, got {tps!r}")
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as e:
        raise RewriteError(f"the routing file is not valid YAML: {e}") from None
    models = _child(root, "models") if root is not None else None
    found: yaml.Node | None = None
    if isinstance(models, yaml.SequenceNode):
        for m in models.value:
            name = _child(m, "name")
            if isinstance(name, yaml.ScalarNode) and name.value == model:
                found = m
                break
    if found is None:
        raise RewriteError(f"no model named {model!r} under models: in the routing file")
    pricing = _child(found, "pricing")
    value = _child(pricing, "tokens_per_second") if pricing is not None else None
    if not isinstance(value, yaml.ScalarNode):
        raise RewriteError(
            f"model {model!r} has no pricing.tokens_per_second to rewrite; --write updates "
            "local pricing (hardware_usd_per_hour + tokens_per_second): add both first"
        )
    start, end = value.start_mark.index, value.end_mark.index
    new = text[:start] + format_tps(tps) + text[end:]
    eol = new.find("\n", start)
    eol = len(new) if eol < 0 else eol
    line_start = new.rfind("\n", 0, start) + 1
    line = _OUR_COMMENT.sub("", new[line_start:eol])
    comment_text = " ".join(comment.split())  # one line
    new = new[:line_start] + f"{line}  {COMMENT_TAG}{comment_text}" + new[eol:]
    try:
        cfg = parse_config(new)
    except ConfigError as e:
        raise RewriteError(
            f"the rewritten file would not load, so it was not written: {e}"
        ) from None
    got = next(m for m in cfg.models if m.name == model).pricing
    if got is None or got.tokens_per_second != float(format_tps(tps)):
        raise RewriteError("the rewritten value did not read back; the file was not written")
    return new


def write_tokens_per_second(path: Path, model: str, tps: float, comment: str) -> str:
    """Rewrite the file in place (a temporary file renamed over it); returns the new text."""
    old = path.read_bytes().decode("utf-8")
    new = rewrite_tokens_per_second(old, model, tps, comment)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(new.encode("utf-8"))
    try:
        os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return new

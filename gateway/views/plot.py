"""A quality-cost chart as a PNG, in pure Python (zlib + struct; no plotting library).

`plot_quality_cost(points, path)` draws each point {"label", "cost_usd", "quality", "kind"}
(x = cost, y = quality; kind "routed" is drawn larger, in red) over labelled axes; points of
kind "tier" are joined by a line in cost order, the trade-off curve of using one tier alone.
`report_plotter(rows, totals, path, args)` adapts `tollgate report` rows to it.

The rasteriser is hand-written: an RGB canvas, Bresenham lines with a pen width, filled
discs and rectangles, and a 5x7 bitmap font (upper case, digits, common punctuation).
"""

from __future__ import annotations

import itertools
import math
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RGB = tuple[int, int, int]
WHITE: RGB = (255, 255, 255)
INK: RGB = (29, 35, 48)
GRID: RGB = (227, 230, 236)
MUTED: RGB = (107, 115, 133)
BLUE: RGB = (21, 101, 192)
RED: RGB = (198, 40, 40)
TIER_COLORS: dict[str, RGB] = {
    "small": (46, 125, 50),
    "medium": (21, 101, 192),
    "large": (239, 108, 0),
    "external": (142, 36, 170),
}

# 5x7 glyphs: 7 rows of 5 pixels ("#" = ink), space-separated.
_FONT_SRC: dict[str, str] = {
    "0": ".###. #...# #..## #.#.# ##..# #...# .###.",
    "1": "..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.",
    "2": ".###. #...# ....# ...#. ..#.. .#... #####",
    "3": "####. ....# ....# .###. ....# ....# ####.",
    "4": "...#. ..##. .#.#. #..#. ##### ...#. ...#.",
    "5": "##### #.... ####. ....# ....# #...# .###.",
    "6": "..##. .#... #.... ####. #...# #...# .###.",
    "7": "##### ....# ...#. ..#.. .#... .#... .#...",
    "8": ".###. #...# #...# .###. #...# #...# .###.",
    "9": ".###. #...# #...# .#### ....# ...#. .##..",
    "A": ".###. #...# #...# ##### #...# #...# #...#",
    "B": "####. #...# #...# ####. #...# #...# ####.",
    "C": ".###. #...# #.... #.... #.... #...# .###.",
    "D": "###.. #..#. #...# #...# #...# #..#. ###..",
    "E": "##### #.... #.... ####. #.... #.... #####",
    "F": "##### #.... #.... ####. #.... #.... #....",
    "G": ".###. #...# #.... #.### #...# #...# .####",
    "H": "#...# #...# #...# ##### #...# #...# #...#",
    "I": ".###. ..#.. ..#.. ..#.. ..#.. ..#.. .###.",
    "J": "..### ...#. ...#. ...#. ...#. #..#. .##..",
    "K": "#...# #..#. #.#.. ##... #.#.. #..#. #...#",
    "L": "#.... #.... #.... #.... #.... #.... #####",
    "M": "#...# ##.## #.#.# #.#.# #...# #...# #...#",
    "N": "#...# #...# ##..# #.#.# #..## #...# #...#",
    "O": ".###. #...# #...# #...# #...# #...# .###.",
    "P": "####. #...# #...# ####. #.... #.... #....",
    "Q": ".###. #...# #...# #...# #.#.# #..#. .##.#",
    "R": "####. #...# #...# ####. #.#.. #..#. #...#",
    "S": ".#### #.... #.... .###. ....# ....# ####.",
    "T": "##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#..",
    "U": "#...# #...# #...# #...# #...# #...# .###.",
    "V": "#...# #...# #...# #...# #...# .#.#. ..#..",
    "W": "#...# #...# #...# #.#.# #.#.# #.#.# .#.#.",
    "X": "#...# #...# .#.#. ..#.. .#.#. #...# #...#",
    "Y": "#...# #...# .#.#. ..#.. ..#.. ..#.. ..#..",
    "Z": "##### ....# ...#. ..#.. .#... #.... #####",
    " ": "..... ..... ..... ..... ..... ..... .....",
    ".": "..... ..... ..... ..... ..... .##.. .##..",
    ",": "..... ..... ..... ..... .##.. ..#.. .#...",
    "-": "..... ..... ..... .###. ..... ..... .....",
    "+": "..... ..#.. ..#.. ##### ..#.. ..#.. .....",
    "%": "##... ##..# ...#. ..#.. .#... #..## ...##",
    "$": "..#.. .#### #.#.. .###. ..#.# ####. ..#..",
    "(": "...#. ..#.. .#... .#... .#... ..#.. ...#.",
    ")": ".#... ..#.. ...#. ...#. ...#. ..#.. .#...",
    "/": "..... ....# ...#. ..#.. .#... #.... .....",
    ":": "..... .##.. .##.. ..... .##.. .##.. .....",
    "_": "..... ..... ..... ..... ..... ..... #####",
    "=": "..... ..... ##### ..... ##### ..... .....",
    '"': ".#.#. .#.#. .#.#. ..... ..... ..... .....",
    "'": "..#.. ..#.. ..#.. ..... ..... ..... .....",
    "?": ".###. #...# ....# ...#. ..#.. ..... ..#..",
    "<": "...#. ..#.. .#... #.... .#... ..#.. ...#.",
    ">": ".#... ..#.. ...#. ....# ...#. ..#.. .#...",
    "*": "..... ..#.. #.#.# .###. #.#.# ..#.. .....",
}


def _glyph(src: str) -> list[str]:
    rows = src.split()
    if len(rows) != 7 or any(len(r) != 5 for r in rows):
        raise ValueError(f"bad glyph {src!r}")
    return rows


FONT: dict[str, list[str]] = {ch: _glyph(s) for ch, s in _FONT_SRC.items()}


class Canvas:
    """An RGB raster with the few primitives the chart needs."""

    def __init__(self, width: int, height: int, bg: RGB = WHITE) -> None:
        self.w, self.h = width, height
        self.px = bytearray(bytes(bg) * (width * height))

    def set(self, x: int, y: int, c: RGB) -> None:
        if 0 <= x < self.w and 0 <= y < self.h:
            i = 3 * (y * self.w + x)
            self.px[i : i + 3] = bytes(c)

    def rect(self, x0: int, y0: int, x1: int, y1: int, c: RGB) -> None:
        for y in range(max(0, min(y0, y1)), min(self.h, max(y0, y1) + 1)):
            for x in range(max(0, min(x0, x1)), min(self.w, max(x0, x1) + 1)):
                self.set(x, y, c)

    def disc(self, cx: int, cy: int, r: int, c: RGB) -> None:
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                if dx * dx + dy * dy <= r * r + r:
                    self.set(cx + dx, cy + dy, c)

    def line(self, x0: int, y0: int, x1: int, y1: int, c: RGB, width: int = 1) -> None:
        """Bresenham; a wider pen stamps a square at every step."""
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        half = width // 2
        while True:
            if width <= 1:
                self.set(x0, y0, c)
            else:
                self.rect(x0 - half, y0 - half, x0 + half, y0 + half, c)
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def text(self, x: int, y: int, s: str, c: RGB, scale: int = 2, anchor: str = "left") -> None:
        """Draw `s` with its top-left at (x, y); anchor "right"/"center" shifts it."""
        w = text_width(s, scale)
        if anchor == "right":
            x -= w
        elif anchor == "center":
            x -= w // 2
        for ch in s:
            g = FONT.get(ch) or FONT.get(ch.upper()) or FONT["?"]
            for row, bits in enumerate(g):
                for col, b in enumerate(bits):
                    if b == "#":
                        self.rect(
                            x + col * scale,
                            y + row * scale,
                            x + col * scale + scale - 1,
                            y + row * scale + scale - 1,
                            c,
                        )
            x += 6 * scale

    def png(self) -> bytes:
        raw = b"".join(
            b"\x00" + bytes(self.px[3 * y * self.w : 3 * (y + 1) * self.w]) for y in range(self.h)
        )

        def chunk(kind: bytes, data: bytes) -> bytes:
            return (
                struct.pack(">I", len(data))
                + kind
                + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
            )

        ihdr = struct.pack(">IIBBBBB", self.w, self.h, 8, 2, 0, 0, 0)  # 8-bit RGB
        return (
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b"")
        )


def text_width(s: str, scale: int = 2) -> int:
    return max(0, len(s) * 6 * scale - scale)


def _nice_step(span: float, ticks: int = 5) -> float:
    raw = span / ticks if span > 0 else 1.0
    p = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if m * p >= raw:
            return m * p
    return 10 * p


def _fmt(v: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step))) if step > 0 else 0
    return f"{v:.{min(decimals + 1, 8)}f}" if step < 1 else f"{v:.0f}"


def plot_quality_cost(
    points: Sequence[dict[str, Any]],
    path: str | Path,
    *,
    title: str = "QUALITY VS COST",
    x_label: str = "COST, USD PER 1K REQUESTS",
    y_label: str = "QUALITY",
    width: int = 900,
    height: int = 600,
) -> Path:
    """Write the chart to `path` (PNG) and return the path.

    Each point: {"label": str, "cost_usd": float (x), "quality": float (y),
    "kind": "routed" | "tier" (optional), "tier": small|medium|large|external (optional)}.
    """
    c = Canvas(width, height)
    left, right, top, bottom = 110, 40, 60, 80
    iw, ih = width - left - right, height - top - bottom
    xs = [float(p["cost_usd"]) for p in points] or [0.0, 1.0]
    ys = [float(p["quality"]) for p in points] or [0.0, 1.0]
    x_lo, x_hi = 0.0, max(xs) * 1.1 or 1.0
    y_lo, y_hi = min(0.0, min(ys)), max(ys) * 1.15 or 1.0
    xstep, ystep = _nice_step(x_hi - x_lo), _nice_step(y_hi - y_lo)
    x_hi = math.ceil(x_hi / xstep) * xstep
    y_hi = math.ceil(y_hi / ystep) * ystep

    def px(x: float) -> int:
        return left + round((x - x_lo) / (x_hi - x_lo) * iw)

    def py(y: float) -> int:
        return top + ih - round((y - y_lo) / (y_hi - y_lo) * ih)

    c.text(width // 2, 18, title, INK, 3, "center")
    v = x_lo
    while v <= x_hi + xstep / 2:
        x = px(v)
        c.line(x, top, x, top + ih, GRID)
        c.text(x, top + ih + 10, _fmt(v, xstep), MUTED, 2, "center")
        v += xstep
    v = y_lo
    while v <= y_hi + ystep / 2:
        y = py(v)
        c.line(left, y, left + iw, y, GRID)
        c.text(left - 10, y - 7, _fmt(v, ystep), MUTED, 2, "right")
        v += ystep
    c.line(left, top + ih, left + iw, top + ih, INK, 2)
    c.line(left, top, left, top + ih, INK, 2)
    c.text(left + iw // 2, height - 34, x_label, INK, 2, "center")
    c.text(12, top - 30, y_label, INK, 2)

    tiers = sorted(
        (p for p in points if p.get("kind", "tier") == "tier"), key=lambda p: p["cost_usd"]
    )
    for a, b in itertools.pairwise(tiers):
        c.line(px(a["cost_usd"]), py(a["quality"]), px(b["cost_usd"]), py(b["quality"]), MUTED, 2)
    placed: list[tuple[int, int, int, int]] = []
    # routed first, so it gets the best spot; its label never hides behind a tier's
    for p in sorted(points, key=lambda p: p.get("kind") != "routed"):
        x, y = px(float(p["cost_usd"])), py(float(p["quality"]))
        routed = p.get("kind") == "routed"
        tier = str(p.get("tier") or str(p.get("label", "")).split()[-1])
        color = RED if routed else TIER_COLORS.get(tier, BLUE)
        c.disc(x, y, 9 if routed else 6, color)
        label = str(p.get("label", "")).upper()
        tw, th = text_width(label), 14
        options = [(x + 14, y - 7), (x - 14 - tw, y - 7), (x - tw // 2, y - 28),
                   (x - tw // 2, y + 14), (x + 14, y - 26), (x + 14, y + 12)]  # fmt: skip

        def free(box: tuple[int, int, int, int]) -> bool:
            x0, y0, x1, y1 = box
            if x0 < left + 4 or x1 > width - 2 or y0 < top - 20 or y1 > top + ih:
                return False
            return all(x1 < a or x0 > b or y1 < c_ or y0 > d for a, c_, b, d in placed)

        boxes = [(lx, ly, lx + tw, ly + th) for lx, ly in options]
        box = next((b for b in boxes if free(b)), boxes[0])
        placed.append(box)
        c.text(box[0], box[1], label, color if routed else INK, 2)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(c.png())
    return out


def report_plotter(
    rows: list[dict[str, Any]], totals: dict[str, Any], path: str, args: Any = None
) -> None:
    """`tollgate report --plot`: each group's served requests and the whole mix.

    Rows are /v1/usage rows (any group_by): x = cost per 1k requests, y = quality_mean;
    groups without quality scores are drawn at 0 and labelled "(no score)".
    """
    points: list[dict[str, Any]] = []
    for r in rows:
        n = max(1, int(r.get("requests") or 0))
        q = r.get("quality_mean")
        points.append(
            {
                "label": str(r["group"]) + ("" if q is not None else " (no score)"),
                "cost_usd": 1000.0 * float(r.get("cost_usd") or 0.0) / n,
                "quality": float(q or 0.0),
                "kind": "tier",
            }
        )
    if totals and totals.get("requests"):
        n = int(totals["requests"])
        points.append(
            {
                "label": "routed mix",
                "cost_usd": 1000.0 * float(totals.get("cost_usd") or 0.0) / n,
                "quality": float(totals.get("quality_mean") or 0.0),
                "kind": "routed",
            }
        )
    plot_quality_cost(points, path)

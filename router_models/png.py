"""Curve plots as PNG: matplotlib when it is installed, else a tiny built-in rasteriser."""

from __future__ import annotations

import itertools
import struct
import zlib
from pathlib import Path

COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]


def _encode_png(width: int, height: int, rows: list[bytearray]) -> bytes:
    raw = b"".join(b"\x00" + bytes(r) for r in rows)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + tag
            + data
            + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def _raster(
    path: Path,
    series: list[tuple[str, list[float], list[float]]],
    hlines: list[tuple[str, float]],
    xr: tuple[float, float],
    yr: tuple[float, float],
) -> None:
    w, h, pad = 480, 360, 30
    rows = [bytearray(b"\xff" * (w * 3)) for _ in range(h)]

    def put(x: int, y: int, c: tuple[int, int, int]) -> None:
        if 0 <= x < w and 0 <= y < h:
            rows[y][3 * x : 3 * x + 3] = bytes(c)

    def to_px(x: float, y: float) -> tuple[int, int]:
        fx = (x - xr[0]) / ((xr[1] - xr[0]) or 1)
        fy = (y - yr[0]) / ((yr[1] - yr[0]) or 1)
        return int(pad + fx * (w - 2 * pad)), int(h - pad - fy * (h - 2 * pad))

    def line(
        a: tuple[int, int], b: tuple[int, int], c: tuple[int, int, int], dash: bool = False
    ) -> None:
        (x0, y0), (x1, y1) = a, b
        n = max(abs(x1 - x0), abs(y1 - y0), 1)
        for i in range(n + 1):
            if dash and (i // 4) % 2:
                continue
            x = round(x0 + (x1 - x0) * i / n)
            y = round(y0 + (y1 - y0) * i / n)
            for dx, dy in ((0, 0), (1, 0), (0, 1)):
                put(x + dx, y + dy, c)

    black = (0, 0, 0)
    line(to_px(xr[0], yr[0]), to_px(xr[1], yr[0]), black)
    line(to_px(xr[0], yr[0]), to_px(xr[0], yr[1]), black)
    for i, (_, yv) in enumerate(hlines):
        line(to_px(xr[0], yv), to_px(xr[1], yv), (128, 128, 128) if i == 0 else (200, 0, 0), True)
    for i, (_, xs, ys) in enumerate(series):
        c = COLORS[i % len(COLORS)]
        pts = [to_px(x, y) for x, y in zip(xs, ys, strict=True)]
        for a, b in itertools.pairwise(pts):
            line(a, b, c)
        # legend swatch: one coloured box per series, top left, in series order
        for dx in range(12):
            for dy in range(6):
                put(pad + 8 + dx, pad + 4 + 10 * i + dy, c)
    path.write_bytes(_encode_png(w, h, rows))


def plot_curves(
    path: str | Path,
    title: str,
    xlabel: str,
    ylabel: str,
    series: list[tuple[str, list[float], list[float]]],
    hlines: list[tuple[str, float]] | None = None,
) -> str:
    """Draw the curves; returns which backend drew them ("matplotlib" or "builtin")."""
    path = Path(path)
    hlines = hlines or []
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        xs = [x for _, s, _ in series for x in s]
        ys = [y for _, _, q in series for y in q] + [v for _, v in hlines]
        lo, hi = min(ys), max(ys)
        span = (hi - lo) or 1.0
        _raster(path, series, hlines, (min(xs), max(xs)), (lo - 0.05 * span, hi + 0.05 * span))
        return "builtin"
    fig = plt.figure(figsize=(6, 5))
    for label, xs, ys in series:
        plt.plot(xs, ys, label=label, marker=".", linestyle="-")
    for i, (label, yv) in enumerate(hlines):
        plt.axhline(y=yv, color="grey" if i == 0 else "red", linestyle="--", label=label)
    plt.xlabel(xlabel)
    plt.ylabel(ylabel)
    plt.title(title)
    plt.legend()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return "matplotlib"

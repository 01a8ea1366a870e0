"""Checks that a chart is one a person can read (used by the tests of every command that
draws one): a real PNG with ink on it, and, in its matplotlib Figure, a title, labelled axes
with units, ticks, a legend and labelled points whose labels do not overlap."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread
from matplotlib.text import Annotation, Text

from gateway.views import plot
from tests.support import REPO


def spy_charts(monkeypatch: pytest.MonkeyPatch) -> list[Figure]:
    """Collect the Figures the real chart functions return while a command runs."""
    figures: list[Figure] = []
    for name in ("report_chart", "router_curve_chart", "two_model_chart"):
        real = getattr(plot, name)

        def spy(*a: Any, _real: Any = real, **kw: Any) -> Figure:
            fig: Figure = _real(*a, **kw)
            figures.append(fig)
            return fig

        monkeypatch.setattr(plot, name, spy)
    return figures


def texts(fig: Figure) -> list[str]:
    return [t.get_text() for t in fig.findobj(Text) if t.get_text()]


ARTIFACTS = REPO / "test-artifacts" / "charts"


def assert_png(path: Path, keep_as: str | None = None) -> np.ndarray:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / (keep_as or path.name)).write_bytes(data)
    img = imread(path)
    h, w = img.shape[:2]
    assert w >= 600 and h >= 400
    ink = (img[:, :, :3] < 0.6).any(axis=2).mean()  # share of pixels clearly not white
    assert 0.01 < ink < 0.5, ink
    return img


def assert_readable(fig: Figure, *, points: set[str], legend: set[str]) -> None:
    """Title, axis labels with units, ticks, legend entries, and the named points labelled
    where no two labels overlap."""
    (ax,) = fig.axes
    assert ax.get_title(loc="left"), "no title"
    for label in (ax.get_xlabel(), ax.get_ylabel()):
        assert label, "an axis has no label"
    assert "(" in ax.get_xlabel(), f"no unit on the x axis: {ax.get_xlabel()!r}"
    fig.canvas.draw()
    for ticks in (ax.get_xticklabels(), ax.get_yticklabels()):
        assert len([t for t in ticks if t.get_text()]) >= 2, "an axis has no tick labels"
    leg = ax.get_legend()
    assert leg is not None, "no legend"
    assert {t.get_text() for t in leg.get_texts()} == legend
    notes = [a for a in fig.findobj(Annotation) if a.get_text()]
    assert {a.get_text() for a in notes} == points
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    boxes = []
    for a in notes:  # where the text lands: an Annotation's own extent includes its leader line
        a.update_positions(renderer)
        boxes.append(Text.get_window_extent(a, renderer))
    frame = ax.get_window_extent(renderer)
    for i, b in enumerate(boxes):
        assert frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1
        for j in range(i):
            assert not b.overlaps(boxes[j]), f"{notes[i].get_text()} overlaps {notes[j].get_text()}"

"""Figures of the evaluation reports and comparisons, drawn without pyplot and saved atomically."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any


def save_figure(fig: Any, path: Path) -> Path:
    """Save a figure as PNG atomically: a temp file in the same folder, then ``os.replace``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=100, bbox_inches="tight")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def new_figure() -> tuple[Any, Any]:
    """A figure and its axes on the Agg canvas (no pyplot: no global backend, no GUI)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("the evaluation plots need matplotlib: pip install 'matplotlib>=3.7'") from err
    # A bare Figure on the Agg canvas: no pyplot, so no global backend switch and no GUI.
    fig = Figure(figsize=(6.4, 4.2))
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()

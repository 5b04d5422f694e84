"""Shared plotting setup for reports and experiments (matplotlib, headless, one style)."""

from __future__ import annotations

from loralab.errors import ConfigError


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend."""
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("plots need matplotlib: pip install 'loralab[plot]'.") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
                         "axes.spines.right": False, "font.size": 9})
    return plt


def save(fig, path, dpi: int = 120):
    """Lay out, write and close a figure (cropped to what is drawn, colorbar labels included); returns ``path``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def label_points(ax, points: list[tuple[float, float, str]], log_y: bool = True, fontsize: float = 6) -> None:
    """Name each (x, y) point of a scatter beside it, up and to the right; a point whose label would land on an
    earlier label (within 6% of the x span and, in log space when ``log_y``, 0.15 of y) gets it one line lower for
    each such neighbour, so close units stay readable."""
    import math

    def height(y: float) -> float:
        return math.log(y) if log_y and y > 0 else y

    xs = [x for x, _, _ in points]
    span = (max(xs) - min(xs)) or 1.0 if xs else 1.0
    placed: list[tuple[float, float]] = []
    for x, y, name in points:
        near = sum(1 for px, py in placed if abs(x - px) < 0.06 * span and abs(height(y) - py) < 0.15)
        ax.annotate(name, (x, y), fontsize=fontsize, xytext=(3, 3 - (fontsize + 3) * near), textcoords="offset points")
        placed.append((x, height(y)))

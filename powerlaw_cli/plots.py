"""matplotlib figures: schedules, coord checks, LR curves and fits.

Every function takes plain data (numbers, arrays, data frames), writes one PNG and returns its path.
Figures are files only (the Agg backend): nothing here needs a screen.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def save(fig: plt.Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG (creating parent folders) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path

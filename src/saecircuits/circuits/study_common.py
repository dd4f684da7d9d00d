"""One seed-paper study's output folder: its JSON, one figure and a summary, swapped in whole."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def write_study(folder, json_name: str, payload: dict, summary: str, draw: Callable | None = None) -> Path:
    """Write ``json_name``, ``figure.png`` (``draw(plt)`` returns the figure; skipped when None) and ``summary.md``
    into ``folder``, replacing any earlier run only once all are written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from saecircuits.core.files import save_figure, staged_dir, write_json, write_text

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with staged_dir(folder) as tmp:
        write_json(tmp / json_name, payload)
        if draw is not None:
            fig = draw(plt)
            save_figure(fig, tmp / "figure", formats=("png",))
            plt.close(fig)
        write_text(tmp / "summary.md", summary)
    return folder

"""What the seed-paper studies share: a mean with its bootstrap interval over prompts, a rank test of two scorings,
and the output folder (its JSON, one figure and a summary, swapped in whole)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from saecircuits.circuits.faithfulness import bootstrap


def mean_ci(values: torch.Tensor, n_boot: int, seed: int) -> dict:
    """``{"mean", "ci"}``: the mean of per-prompt ``values`` [n] and its 95% percentile bootstrap interval (a paired
    change is the mean of the per-prompt differences)."""
    v = values.float()
    return {"mean": float(v.mean()), "ci": list(bootstrap(v, lambda x: x.mean(-1), n_boot, seed))}


def rank_correlation(a: Sequence[float] | torch.Tensor, b: Sequence[float] | torch.Tensor) -> tuple[float | None, float | None]:
    """Spearman's rank correlation of two scorings of the same items and its two-sided p-value; (None, None) with
    fewer than 3 items or a constant scoring (e.g. no trial answered)."""
    from scipy.stats import spearmanr

    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return None, None
    r = spearmanr(a.numpy(), b.numpy())
    return float(r.statistic), float(r.pvalue)


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

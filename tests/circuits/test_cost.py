"""The comparison says its cost before it runs: the work it plans is the work it then runs."""

from __future__ import annotations

import pytest
from conftest import make_tiny_model

from saecircuits.circuits.comparison import compare
from saecircuits.circuits.config import ComparisonConfig


@pytest.mark.parametrize("granularities,choose_on", [(("nodes", "edges"), ("counterfactual",)),
                                                     (("heads",), ("counterfactual", "mean-clean"))])
def test_the_planned_work_is_the_work_that_ran(granularities, choose_on):
    model = make_tiny_model(n_layers=2, n_kv=2)
    cfg = ComparisonConfig(task="induction", n_train=8, n_val=6, n_test=8, granularities=granularities,
                           random_draws=3, greedy_pool=4, pruning={"steps": 2, "batch_size": 4}, choose_on=choose_on)
    notes: list[str] = []
    result = compare(model, cfg, note=notes.append)
    cost = result["cost"]
    # every kind of run is planned within 10% (greedy's rounds are planned at their most, from mid-depth)
    for kind, ran in cost["work"].items():
        assert ran > 0 and cost["planned_work"][kind] == pytest.approx(ran, rel=0.1), (kind, cost)
    assert cost["work"] == result["work"]
    assert set(cost["rates"]) == {"tokens", "edge_tokens"} and min(cost["rates"].values()) > 0
    assert cost["estimate_seconds"] > 0
    said = [n for n in notes if n.startswith("planned: about")]
    assert said and notes.index(said[0]) < next(i for i, n in enumerate(notes) if "discovered" in n)

"""Retrieval scores and head masking on the tiny induction model: its induction head copies from the earlier
copy of a sequence (a needle), its previous-token head does not."""

from __future__ import annotations

import torch

from saecircuits.circuits.retrieval_heads import Trial, _masking_hooks, retrieval_scores, scored, token_recall


def _trials(facts: dict, n: int = 32) -> list[Trial]:
    """Each row's second copy asked back: the needle is its first copy (after its first token), the answer the
    second copy's predictable tokens, predicted from the positions before them."""
    trials = []
    for tokens, half in zip(facts["tokens"][:n], facts["half"][:n].tolist()):
        L = len(tokens)
        needle = (L - 2 * half + 1, L - half)
        queries = torch.arange(L - half, L - 1)
        trials.append(Trial(tokens, needle, queries, tokens[queries + 1], L, 0.0))
    return trials


def test_an_induction_head_retrieves_and_a_previous_token_head_does_not(induction_model):
    model, facts = induction_model
    scores, recalls = retrieval_scores(model, _trials(facts), min_recall=0.5)
    assert sum(r > 0.5 for r in recalls) >= 24  # the model answers most trials
    assert scores[facts["induction_head"]] > 0.8 and scores[facts["prev_token_head"]] < 0.05
    # over the trials answered in full, the induction head retrieves nearly every needle token, the other is no retrieval head
    exact, recalls = retrieval_scores(model, _trials(facts), min_recall=0.999)
    assert sum(r > 0.999 for r in recalls) >= 8
    assert exact[facts["induction_head"]] >= 0.95 and exact[facts["prev_token_head"]] < 0.1  # the paper's threshold


def test_masking_the_induction_heads_breaks_recall_and_uniform_masking_makes_attention_uniform(induction_model):
    model, facts = induction_model
    trials = _trials(facts, 16)
    full = scored(model, trials, [], [])["needle_recall"].mean()
    layer1 = [(1, h) for h in range(model.cfg.n_heads)]
    masked = scored(model, trials, [], _masking_hooks(layer1, "uniform", None))["needle_recall"].mean()
    assert full > 0.8 and masked < 0.5 * full
    patterns = {}
    hooks = _masking_hooks([(1, 0)], "uniform", None) + [
        ("blocks.1.attn.hook_pattern", lambda p, hook: patterns.setdefault("p", p.clone()))]
    model.run_with_hooks(trials[0].tokens[None], fwd_hooks=hooks)
    p = patterns["p"][0, 0]  # [q, k] of the masked head
    L = p.shape[0]
    assert torch.allclose(p, torch.tril(torch.ones(L, L)) / torch.arange(1, L + 1)[:, None], atol=1e-6)
    means = {1: torch.zeros(model.cfg.n_heads, model.cfg.d_head)}
    masked_mean = scored(model, trials, [], _masking_hooks(layer1, "mean", means))["needle_recall"].mean()
    assert masked_mean < 0.5 * full


def test_token_recall_counts_a_multiset():
    assert token_recall(torch.tensor([1, 1, 2]), torch.tensor([1, 2, 3, 1])) == 0.75
    assert token_recall(torch.tensor([5]), torch.tensor([1, 2])) == 0.0


def test_the_study_runs_end_to_end_and_writes_its_folder(tmp_path):
    """A random tiny model answers no needle: no head scores, and the causal test says it was skipped."""
    import json

    import pytest
    from conftest import make_tiny_model

    from saecircuits.circuits.config import RetrievalConfig
    from saecircuits.circuits.retrieval_heads import study, write
    from saecircuits.core.errors import SaecircuitsError

    model = make_tiny_model(n_layers=2, n_ctx=512)
    cfg = RetrievalConfig(text="stdlib", lengths=(32, 48), depths=2, random_draws=2, n_boot=50)
    result = study(model, cfg)
    assert result["answered"] == {"train": 0, "test": 0, "of": 12}
    assert result["retrieval_heads"] == [] and "skipped" in result["masking"]
    folder = write(result, tmp_path / "rh", "tiny", cfg)
    assert sorted(p.name for p in folder.iterdir()) == ["figure.png", "retrieval_heads.json", "summary.md"]
    assert json.loads((folder / "retrieval_heads.json").read_text())["share"] == 0.0
    assert "Paper: under 5% of heads" in (folder / "summary.md").read_text()
    with pytest.raises(SaecircuitsError, match="longer than"):
        study(model, RetrievalConfig(text="stdlib", lengths=(600,), depths=1))

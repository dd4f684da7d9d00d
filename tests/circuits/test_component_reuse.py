"""Circuit component reuse on tiny models built here: the attention edit that sets a head to another task's
behaviour, the heads' direct effects, the overlap and its null."""

from __future__ import annotations

import torch
from conftest import make_tiny_model

from saecircuits.circuits import component_reuse as cr
from saecircuits.circuits.task import Task


def _task(model, n: int = 6, seed: int = 0) -> Task:
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(3, model.cfg.d_vocab, (n, 10), generator=g)
    return Task("t", clean, clean.clone(), clean[:, 4], clean[:, [2, 6]])


@torch.no_grad()
def test_setting_a_head_to_attend_to_the_wrong_answers_moves_exactly_that_mass():
    model = make_tiny_model(n_layers=2, seed=3)
    task = _task(model)
    base = cr.run(model, task, batch_size=4)
    edited = cr.run(model, task, lambda rows: cr.pattern_hooks(task, {(1, 2): 0.7}, rows), batch_size=4)
    attn = cr.inhibition_attention(task, edited["pattern"])
    assert torch.allclose(attn[:, 1, 2], torch.full((len(task),), 0.7), atol=1e-5)
    assert torch.allclose(edited["pattern"].sum(-1), torch.ones_like(attn), atol=1e-5)  # rows stay distributions
    # the rest of the edited row keeps its proportions; other heads and earlier layers are untouched
    keep = ~cr.wrong_mask(task)
    b, e = base["pattern"][:, 1, 2], edited["pattern"][:, 1, 2]
    assert torch.allclose(e * keep, 0.3 * b * keep / (b * keep).sum(-1, keepdim=True), atol=1e-5)
    assert torch.equal(edited["pattern"][:, 0], base["pattern"][:, 0])
    assert torch.equal(edited["pattern"][:, 1, :2], base["pattern"][:, 1, :2])
    assert not torch.allclose(edited["logits"], base["logits"])


@torch.no_grad()
def test_the_heads_direct_effects_add_up_to_the_logit_difference():
    model = make_tiny_model(n_layers=2, attn_only=True, normalization_type="RMSPre", seed=4)
    task = _task(model, seed=1)
    r = cr.run(model, task, batch_size=4)
    store = {}

    def keep(x, hook):
        store[hook.name] = x[:, -1]
    model.run_with_hooks(task.clean, fwd_hooks=[(lambda n: n in ("hook_embed", "hook_pos_embed", "ln_final.hook_scale"), keep)])
    rest = store["hook_embed"] + store["hook_pos_embed"] + sum(b.attn.b_O for b in model.blocks)
    direction = model.W_U[:, task.answers] - model.W_U[:, task.wrong].mean(-1)  # [d_model, n]
    bias = model.b_U[task.answers] - model.b_U[task.wrong].mean(-1)
    other = (rest / store["ln_final.hook_scale"] * direction.T).sum(-1) + bias
    metric = task.metric(r["logits"][:, None])
    assert torch.allclose(r["direct"].sum((1, 2)) + other, metric, atol=1e-4)


def test_overlap_against_its_null():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(10, 10, generator=g)
    same = cr.overlap(a, a.clone(), (5, 20))
    assert [r["overlap"] for r in same] == [1.0, 1.0] and all(r["p_value"] < 1e-3 for r in same)
    assert [r["k"] for r in same] == [5, 20] and abs(same[1]["null_mean"] - 0.2) < 1e-9
    other = cr.overlap(a, -torch.randn(10, 10, generator=g), (20,))[0]
    assert other["overlap"] <= 0.5 and other["p_value"] > 1e-3
    assert cr.top_heads(torch.tensor([[0.0, -3.0], [2.0, 1.0]]), 2) == {(0, 1), (1, 0)}  # by |score|


def test_the_study_runs_end_to_end_on_the_real_model(smollm2, tmp_path):
    import json

    from saecircuits.circuits.config import ReuseConfig

    cfg = ReuseConfig(n_train=4, n_test=8, ig_steps=1, percents=(5.0,), repair_heads=2, random_draws=1, n_boot=50)
    result = cr.study(smollm2, cfg)
    assert set(result["overlap"]) == {"ioi-colored_objects", "ioi-greater_than", "colored_objects-greater_than"}
    assert result["tasks"]["ioi"]["can_do"]
    # the repair ran on the heads it names, and its change is the paired difference of its accuracies
    rep = result["repair"]
    assert len(result["repaired_heads"]) == 2
    assert abs(rep["accuracy_change"]["mean"] - (rep["accuracy"]["after"]["mean"] - rep["accuracy"]["before"]["mean"])) < 1e-6
    lo, hi = rep["accuracy_change"]["ci"]
    assert lo <= rep["accuracy_change"]["mean"] <= hi
    folder = cr.write(result, tmp_path / "cr", "smollm2-135m", cfg)
    assert sorted(p.name for p in folder.iterdir()) == ["component_reuse.json", "figure.png", "summary.md"]
    saved = json.loads((folder / "component_reuse.json").read_text())
    assert 0 <= saved["overlap"]["ioi-colored_objects"][0]["overlap"] <= 1
    assert "78%" in (folder / "summary.md").read_text()

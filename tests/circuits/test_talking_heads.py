"""Talking Heads' channel edits on tiny models built here: a planted rank-1 OV channel whose weight edit and
representation edit change the output as predicted, the attribution's split over components, list positions."""

from __future__ import annotations

import torch
from conftest import make_tiny_model

from saecircuits.circuits import talking_heads as th
from saecircuits.circuits.task import Task


def _planted(seed: int = 0):
    """A 1-layer attention-only model whose head 0.1 writes through one OV channel: W_O = a b^T, |b| = 1."""
    model = make_tiny_model(n_layers=1, attn_only=True, seed=seed)
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(model.cfg.d_head, generator=g)
    b = torch.nn.functional.normalize(torch.randn(model.cfg.d_model, generator=g), dim=0)
    with torch.no_grad():
        model.blocks[0].attn.W_O.data[1] = a[:, None] * b[None] * 3
    tokens = torch.randint(3, model.cfg.d_vocab, (6, 12), generator=g)
    return model, tokens, b


def _resid_and_logits(model, tokens, hooks=()):
    store = {}

    def keep(x, hook):
        store["resid"] = x[:, -1].clone()
    logits = model.run_with_hooks(tokens, fwd_hooks=[*hooks, ("blocks.0.hook_resid_post", keep)])
    return store["resid"], logits[:, -1]


@torch.no_grad()
def test_a_planted_channel_edited_in_the_weights_or_the_representation_moves_the_output_as_predicted():
    model, tokens, b = _planted()
    V = th.subspaces(model)[0, 1]
    assert torch.allclose(V[:, 0].abs(), b.abs(), atol=1e-5)  # the one channel is found
    Vs = V[:, :1]
    zs = {}
    model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_z", lambda z, hook: zs.update(z=z[:, -1, 1].clone()))])
    coords = th.head_coords(model, zs["z"], (0, 1), Vs)  # [n, 1]
    resid, logits = _resid_and_logits(model, tokens)
    for alpha in (0.0, 2.5):
        with th.scaled_components(model, {(0, 1): Vs}, alpha):
            w_resid, w_logits = _resid_and_logits(model, tokens)
        # predicted: only the channel's coordinate changes, by (alpha - 1) times itself
        assert torch.allclose(w_resid - resid, (alpha - 1) * coords @ Vs.T, atol=1e-4)
        r_resid, r_logits = _resid_and_logits(model, tokens, th.edit_hooks(model, {(0, 1): (Vs, alpha * coords)}))
        assert torch.allclose(r_resid, w_resid, atol=1e-4) and torch.allclose(r_logits, w_logits, atol=1e-3)
        assert (w_logits - logits).abs().max() > 0.1
    # the weights are restored, and an edit of a channel the head does not use changes nothing
    assert torch.allclose(_resid_and_logits(model, tokens)[1], logits)
    with th.scaled_components(model, {(0, 1): V[:, 5:8]}, 3.0):
        assert torch.allclose(_resid_and_logits(model, tokens)[1], logits, atol=1e-4)
    # with no later layer, the change taken out of the final residual stream leaves nothing
    ind = th.edit_hooks(model, {(0, 1): (Vs, 2.5 * coords)}, indirect=True)
    assert torch.allclose(_resid_and_logits(model, tokens, ind)[1], logits, atol=1e-4)


def test_the_attribution_of_a_head_is_the_sum_over_its_components():
    g = torch.Generator().manual_seed(1)
    for attn_only in (False, True):
        model = make_tiny_model(n_layers=2, seed=1, attn_only=attn_only)
        clean = torch.randint(3, model.cfg.d_vocab, (5, 10), generator=g)
        task = Task("t", clean, clean.clone(), clean[:, 2], clean[:, 3:5])
        means = th.final_state(model, task)[0].mean(0)
        heads, comps = th.attribution(model, task, means, th.subspaces(model), batch_size=2)
        assert torch.allclose(comps.sum(-1), heads, atol=1e-4)
        assert heads[0].abs().max() > 1e-3
        # without an MLP after it, a last-layer head reaches the logits only directly: through later layers, nothing
        assert (heads[-1].abs().max() < 1e-6) == attn_only


def test_item_positions_and_position_decoding():
    # list "x y z", then y and z again: the answer x is at list index 0, not mentioned again
    clean = torch.tensor([[1, 10, 11, 12, 2, 11, 12, 3], [1, 12, 10, 11, 2, 12, 10, 3]])
    task = Task("t", clean, clean.clone(), torch.tensor([10, 11]), torch.tensor([[11, 12], [12, 10]]))
    first, again, k = th.item_positions(task)
    assert first.tolist() == [[1, 2, 3], [1, 2, 3]] and again.tolist() == [[-1, 5, 6], [5, 6, -1]]
    assert k.tolist() == [0, 2]
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0, 0, 5], [0, 0, 0, -5], [0, 0, 0, 15]])  # only component 3 holds position
    fit, test = (centers + torch.randn(n, 3, 4, generator=g) for n in (40, 30))
    assert th.decode_positions(fit, test) == 1.0
    assert th.positional_components(fit, 1) == [3]
    assert th.decode_positions(fit[..., :3], test[..., :3]) < 0.6  # noise alone: near chance (1/3)


def test_the_study_runs_end_to_end_on_the_real_model(smollm2, tmp_path):
    import json

    from saecircuits.circuits.config import TalkingHeadsConfig

    cfg = TalkingHeadsConfig(sizes=(3,), n=8, heads=1, candidates=2, random_draws=1, alphas=(2.0,), n_boot=50)
    result = th.study(smollm2, cfg)
    head = result["inhibition_heads"][0]
    assert len(head["components"]) == 3 and len(head["share"]) == 3 and head["effect"] > 0
    assert set(result["edits"]["overall"]) == {"none", "representation edit", "weight edit",
                                               "random representation edit", "random weight edit"}
    overall = result["edits"]["overall"]
    for name in ("weight edit", "representation edit"):  # a change is the paired difference of the accuracies
        change = overall[name]["accuracy_change"]["mean"]
        assert abs(change - (overall[name]["accuracy"]["mean"] - overall["none"]["accuracy"]["mean"])) < 1e-6
    folder = th.write(result, tmp_path / "th", "smollm2-135m", cfg)
    assert sorted(p.name for p in folder.iterdir()) == ["figure.png", "summary.md", "talking_heads.json"]
    assert json.loads((folder / "talking_heads.json").read_text())["alpha"] == 2.0
    assert "more than 20 points" in (folder / "summary.md").read_text()

"""Head patching and edge patching against direct computations on tiny models."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_model

from saecircuits.circuits import ablation, patching, prompts
from saecircuits.circuits.discovery.edge_attribution import edge_attribution
from saecircuits.circuits.discovery.edge_patching import patch_edges

BYTES = range(3, 259)


def _task(model, n=10):
    return prompts.induction(model, n=n, half=6, vocab=BYTES, seed=0)


def _naive_sweep(model, task, values):
    """One full forward per head with that head's z replaced: the reference for the batched sweep."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    out = torch.zeros(L, H, len(task))
    for layer in range(L):
        for h in range(H):
            def hook(z, hook, layer=layer, h=h):
                z = z.clone()
                z[:, :, h] = values[layer][:, :, h]
                return z

            logits = model.run_with_hooks(task.clean, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", hook)])
            out[layer, h] = task.metric(logits[:, list(task.positions)])
    return out


KINDS = ["patch", "mean", "zero", "resample"]
MODELS = [{}, {"n_kv": 2}, {"attn_only": True, "n_layers": 2}]


@pytest.mark.parametrize("kw,kind,lean", [(kw, kind, True) for kw in MODELS for kind in KINDS]
                         + [(kw, "mean", False) for kw in MODELS])  # lean=False: TransformerLens's own forward
def test_batched_sweep_equals_a_naive_loop(kw, kind, lean):
    model = make_tiny_model(**kw)
    task = _task(model)
    # small batches and rows, so prompt chunks and stacked-head chunks are both exercised
    patcher = patching.HeadPatcher(model, task, batch_size=4, max_rows=7, lean=lean)
    assert (patcher._lean is not None) == lean
    values = ablation.ablation_values(patcher, kind, seed=1)
    got = patcher.sweep(values)
    want = _naive_sweep(model, task, values)
    assert got.shape == (model.cfg.n_layers, model.cfg.n_heads, len(task))
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_no_replacement_gives_the_clean_metric(tiny_model):
    task = _task(tiny_model)
    patcher = patching.HeadPatcher(tiny_model, task, batch_size=3)
    with torch.no_grad():
        clean = task.metric(tiny_model(task.clean)[:, -1:])
        corr = task.metric(tiny_model(task.corrupted)[:, -1:])
    assert torch.allclose(patcher.corrupted_metric, corr, atol=1e-5)
    assert torch.allclose(patcher.clean_metric, clean, atol=1e-5)
    L, H = tiny_model.cfg.n_layers, tiny_model.cfg.n_heads
    keep_none = torch.zeros(1, L, H, dtype=torch.bool)
    # every head replaced by its own clean output: a real run (from layer 0) that must give the clean metric
    assert torch.allclose(patcher.run(keep_none, patcher.z_clean)[0], clean, atol=1e-5)
    assert not torch.allclose(patcher.run(keep_none, patcher.z_corrupted)[0], clean, atol=1e-3)


def test_ablation_values():
    model = make_tiny_model(n_layers=2)
    task = _task(model, n=6)
    p = patching.HeadPatcher(model, task)
    mean = ablation.ablation_values(p, "mean")
    assert mean.shape == (2, 1, task.clean.shape[1], 4, 8)
    assert torch.allclose(mean[:, 0], p.z_corrupted.mean(1))
    assert (ablation.ablation_values(p, "zero") == 0).all()
    res = ablation.ablation_values(p, "resample", seed=0)
    for i in range(6):  # every prompt gets another prompt's corrupted activations
        match = [j for j in range(6) if torch.equal(res[:, i], p.z_corrupted[:, j])]
        assert match and match[0] != i


def test_gqa_gives_per_query_head_results():
    model = make_tiny_model(n_heads=4, n_kv=2)
    task = _task(model)
    patcher = patching.HeadPatcher(model, task)
    effect = patcher.normalized_effect(patcher.sweep(ablation.ablation_values(patcher, "patch")))
    assert effect.shape == (3, 4)
    # heads 0 and 1 share a key/value head but have their own queries: different effects
    assert not torch.allclose(effect[:, 0], effect[:, 1])
    edges = edge_attribution(model, task)
    assert edges.receivers.count("2.0:k") == 1 and edges.receivers.count("2.1:k") == 1
    assert edges.scores.shape == (1 + 3 * 4 + 3, 3 * 4 * 3 + 3 + 1)
    assert edges.edge("0.0", "2.0:k") != pytest.approx(edges.edge("0.0", "2.1:k"))


def _dense_twin(gqa):
    """The same function as a GQA model, with key/value heads copied per query head (no grouping)."""
    cfg = gqa.cfg
    dense = make_tiny_model(n_layers=cfg.n_layers, d_model=cfg.d_model, n_heads=cfg.n_heads, tokenizer=gqa.tokenizer)
    state = {k: v for k, v in gqa.state_dict().items() if "_W_K" not in k and "_W_V" not in k and "_b_K" not in k and "_b_V" not in k}
    for L in range(cfg.n_layers):
        a = gqa.blocks[L].attn
        state.update({f"blocks.{L}.attn.W_K": a.W_K, f"blocks.{L}.attn.W_V": a.W_V,
                      f"blocks.{L}.attn.b_K": a.b_K, f"blocks.{L}.attn.b_V": a.b_V})
    dense.load_state_dict(state, strict=False)
    return dense


def _direct_edge(model, task, sender, receiver):
    """Reference for one edge into a head's q, k or v, on a model without grouped heads: the receiver
    head's q/k/v is recomputed by hand from its layer norm of (clean input + sender's change)."""
    L_s, h_s = (int(x) for x in sender.split("."))
    node, _, x = receiver.partition(":")
    L_r, h_r = (int(v) for v in node.split("."))
    _, cc = model.run_with_cache(task.clean)
    _, cx = model.run_with_cache(task.corrupted)
    W_O = model.blocks[L_s].attn.W_O[h_s]
    delta = (cx[f"blocks.{L_s}.attn.hook_z"][:, :, h_s] - cc[f"blocks.{L_s}.attn.hook_z"][:, :, h_s]) @ W_O
    a = model.blocks[L_r].attn
    normed = model.blocks[L_r].ln1(cc[f"blocks.{L_r}.hook_resid_pre"] + delta)
    W, b = {"q": (a.W_Q, a.b_Q), "k": (a.W_K, a.b_K), "v": (a.W_V, a.b_V)}[x]
    new = normed @ W[h_r] + b[h_r]

    def hook(act, hook):
        act = act.clone()
        act[:, :, h_r] = new
        return act

    logits = model.run_with_hooks(task.clean, fwd_hooks=[(f"blocks.{L_r}.attn.hook_{x}", hook)])
    with torch.no_grad():
        base = task.metric(model(task.clean)[:, -1:])
    return task.metric(logits[:, -1:]) - base


@pytest.mark.parametrize("n_kv", [None, 2])
def test_edge_patching_equals_a_direct_computation(n_kv):
    model = make_tiny_model(n_layers=3, n_kv=n_kv, seed=2)
    task = _task(model, n=6)
    edges = [("0.1", "2.3:q"), ("0.1", "2.2:k"), ("1.0", "2.3:v"), ("0.2", "1.1:k"), ("1.3", "2.0:k")]
    got = patch_edges(model, task, edges, batch_size=4, max_rows=9)
    reference_model = _dense_twin(model) if n_kv else model
    with torch.no_grad():
        assert torch.allclose(reference_model(task.clean), model(task.clean), atol=1e-5)
    for e, (s, r) in enumerate(edges):
        want = _direct_edge(reference_model, task, s, r)
        assert torch.allclose(got[e], want, atol=1e-5), (s, r, got[e], want)


def test_edge_into_the_logits_of_a_one_layer_model_is_head_patching():
    model = make_tiny_model(n_layers=1, attn_only=True)
    task = _task(model)
    patcher = patching.HeadPatcher(model, task)
    per_head = patcher.sweep(ablation.ablation_values(patcher, "patch"))[0] - patcher.clean_metric
    got = patch_edges(model, task, [(f"0.{h}", "logits") for h in range(4)])
    assert torch.allclose(got, per_head, atol=1e-5)


def test_eap_is_exact_where_the_metric_is_linear_and_close_elsewhere():
    # no final norm and a logit-difference metric: edges into the logits are linear, EAP is exact
    linear = make_tiny_model(n_layers=2, normalization_type=None, seed=1)
    task = _task(linear)
    eap = edge_attribution(linear, task, batch_size=4)
    into_logits = [(s, "logits") for s in eap.senders]
    exact = patch_edges(linear, task, into_logits).mean(1)
    assert torch.allclose(torch.tensor([eap.edge(s, r) for s, r in into_logits]), exact, atol=1e-4)
    assert torch.isnan(eap.scores[eap.senders.index("1.0"), eap.receivers.index("0.2:q")])  # no backward edges
    # elsewhere (layer norms, attention softmax) it is a first-order estimate: check it ranks edges
    model = make_tiny_model(n_layers=3, seed=3)
    task = _task(model, n=16)
    for ig in (0, 4):
        eap = edge_attribution(model, task, ig_steps=ig)
        top = eap.top(20)
        exact = patch_edges(model, task, [(s, r) for s, r, _ in top]).mean(1)
        approx = torch.tensor([v for *_, v in top])
        assert torch.corrcoef(torch.stack([approx, exact]))[0, 1] > 0.6
        assert eap.method == ("eap-ig" if ig else "eap")


def test_bad_edges_are_refused(tiny_model):
    from saecircuits.core.errors import SaecircuitsError

    task = _task(tiny_model, n=2)
    with pytest.raises(SaecircuitsError, match="not an edge"):
        patch_edges(tiny_model, task, [("2.0", "1.0:q")])
    with pytest.raises(SaecircuitsError, match="unknown edge"):
        patch_edges(tiny_model, task, [("0.0", "9.9:q")])

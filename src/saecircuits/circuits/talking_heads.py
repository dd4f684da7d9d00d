"""Talking Heads (Merullo, Eickhoff, Pavlick 2024): the inhibition heads of the Laundry List task, the low-rank
channels of their OV circuits that carry the inhibition, and two edits of those channels.

Procedure (the paper's code is not public; choices are ours and stated here):
1. **Inhibition heads.** A head inhibits when mean-ablating its output at the final position (its ``hook_z``
   replaced by its mean over the choose prompts of that list length) raises the mean log-probability of the wrong
   items (the items mentioned again). Every head is ranked by attribution (the gradient times the ablation's
   change), the top ``candidates`` are measured by real ablation, the ``heads`` strongest kept.
2. **Channels.** Each head's OV = W_V W_O = U diag(S) V^T (``heads.graph.sender_channels``); component i writes
   ``(z W_O v_i) v_i``. Components are ranked the same way (attribution, then the top ``6`` measured by
   mean-ablating their coefficient) and the ``rank`` strongest span the head's inhibition subspace. The share of the
   head's effect that 1, 2, ... ``rank`` components carry is reported.
3. **Positional index.** The coordinates in that subspace of what the head would write from each list item's
   tokens (its value vector times W_O), labelled by the item's list position; a nearest-centroid decoder fitted
   on choose prompts and scored on test prompts says how much of the position the subspace holds.
4. **Edits, on held-out prompts.** Representation edit: at the final position each head's coordinates are set to
   the mean coordinates of correctly answered choose prompts with the same list length and answer position (the
   point that encodes which positions to inhibit). Weight edit: the subspace's components of W_O rescaled by
   ``alpha`` (chosen on choose prompts). Control: the same edits of ``rank`` random other components of the same
   heads. Accuracy and logit difference (answer minus the mean of the other items) before and after, by list
   length and answer position, with paired bootstrap intervals over prompts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from transformer_lens import HookedTransformer

from saecircuits.circuits import prompts
from saecircuits.circuits.config import TalkingHeadsConfig
from saecircuits.circuits.study_common import mean_ci
from saecircuits.circuits.task import Task
from saecircuits.circuits.tasks import logits_at
from saecircuits.core.errors import SaecircuitsError
from saecircuits.model.frozen import frozen

Head = tuple[int, int]
PAPER = {"edits": "the representation and weight edits often improve Laundry List accuracy by more than 20 points",
         "components": "inhibition is concentrated in one or two OV components; positions are indexed in a 3-D subspace"}


def list_tasks(model: HookedTransformer, sizes, n: int, seed: int, exclude: dict[int, Task] | None = None) -> dict[int, Task]:
    """Laundry List prompts, answer anywhere, repeats shuffled, per list length; prompts in ``exclude`` dropped."""
    out = {}
    for size in sizes:
        t = prompts.list_recall(model, n=n, seed=seed, n_items=size, answer_index=None, reorder=True)
        if exclude is not None and size in exclude:
            seen = {tuple(row.tolist()) for row in exclude[size].clean}
            t = t.subset([i for i, row in enumerate(t.clean) if tuple(row.tolist()) not in seen])
        if len(t) < 4:
            raise SaecircuitsError(f"talking-heads: only {len(t)} distinct list_recall prompts of {size} items")
        out[size] = t
    return out


def item_positions(task: Task) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each list item stands, in list order: first mentions [n, k], second mentions [n, k] (-1 for the
    answer, not mentioned again), and the answer's list index [n]."""
    ids = torch.cat([task.answers[:, None], task.wrong], 1)  # [n, k]
    hit = task.clean[:, None, :] == ids[:, :, None]  # [n, k, pos]
    pos = torch.arange(task.clean.shape[1])
    first = torch.where(hit, pos, 10**9).min(-1).values
    second = torch.where(hit & (pos > first[..., None]), pos, 10**9).min(-1).values
    second = torch.where(second == 10**9, -1, second)
    order = first.argsort(1)
    answer_index = (order == 0).float().argmax(1)
    return first.gather(1, order), second.gather(1, order), answer_index


def wrong_logprob(last: torch.Tensor, task: Task) -> torch.Tensor:
    """Mean log-probability of the wrong items at the final position, [n]."""
    return last.log_softmax(-1).gather(1, task.wrong.to(last.device)).mean(1)


def final_logits(model: HookedTransformer, task: Task, hooks: Callable[[slice], list] = lambda rows: [],
                 batch_size: int = 16) -> torch.Tensor:
    """The final position's logits [n, vocab] under ``hooks(rows)`` (hooks made per batch of prompt rows)."""
    out = []
    with torch.no_grad():
        for i in range(0, len(task), batch_size):
            rows = slice(i, i + batch_size)
            out.append(logits_at(model, task.clean[rows], hooks=hooks(rows))[:, 0].float())
    return torch.cat(out)


def final_state(model: HookedTransformer, task: Task, hooks: Callable[[slice], list] = lambda rows: []
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Every head's ``hook_z`` at the final position [n, L, H, d_head] and the final position's logits [n, vocab],
    from one pass (under ``hooks``)."""
    zs: list[torch.Tensor] = []
    layers: dict[int, torch.Tensor] = {}

    def keep(z, hook):
        layers[hook.layer()] = z[:, -1].detach()
        if hook.layer() == model.cfg.n_layers - 1:
            zs.append(torch.stack([layers[i] for i in range(model.cfg.n_layers)], 1))
    logits = final_logits(model, task, lambda rows: hooks(rows) + [(lambda n: n.endswith("attn.hook_z"), keep)])
    return torch.cat(zs), logits


def subspaces(model: HookedTransformer) -> torch.Tensor:
    """Every head's OV write directions V [L, H, d_model, d_head], orthonormal columns by falling singular value:
    ``model.OV = U diag(S) V^T`` (TransformerLens's FactoredMatrix SVD; its ``Vh`` is V, not transposed)."""
    with torch.no_grad():
        return model.OV.svd()[2].detach()


def head_coords(model: HookedTransformer, z: torch.Tensor, head: Head, V: torch.Tensor) -> torch.Tensor:
    """A head's output in its subspace: ``z W_O V`` for z [..., d_head] and V [d_model, r] -> [..., r]."""
    layer, h = head
    return z @ model.blocks[layer].attn.W_O[h].detach() @ V


def edit_hooks(model: HookedTransformer, edits: dict[Head, tuple[torch.Tensor, torch.Tensor | None]],
               rows: slice = slice(None), indirect: bool = False) -> list:
    """Hooks that set, at the final position, each head's coordinates in subspace V [d_model, r] to
    ``target`` [n, r] (rows ``rows``) or to its mean ``target`` [r]; a target of None mean-ablates the whole head
    (``V`` is then its mean z [d_head]). The change is added to ``attn_out`` (so the head's other directions
    and the other heads are untouched). ``indirect``: the change is taken out again from the final residual
    stream, so it reaches the logits only through the later layers (the paper's inhibition acts on later heads)."""
    zs: dict[int, torch.Tensor] = {}
    added: list[torch.Tensor] = []

    def keep(z, hook):
        zs[hook.layer()] = z[:, -1]

    def add(out, hook):
        layer = hook.layer()
        for (lay, h), (V, target) in edits.items():
            if lay != layer:
                continue
            z = zs[layer][:, h]
            if target is None:
                delta = (V - z) @ model.blocks[layer].attn.W_O[h]
            else:
                t = target[rows] if target.dim() == 2 else target
                delta = (t - head_coords(model, z, (lay, h), V)) @ V.T
            out[:, -1] += delta
            added.append(delta)
        return out

    def remove(resid, hook):
        resid[:, -1] -= sum(added)
        return resid
    layers = {lay for lay, _ in edits}
    return ([(f"blocks.{lay}.attn.hook_z", keep) for lay in layers] + [(f"blocks.{lay}.hook_attn_out", add) for lay in layers]
            + ([(f"blocks.{model.cfg.n_layers - 1}.hook_resid_post", remove)] if indirect else []))


def attribution(model: HookedTransformer, task: Task, means: torch.Tensor, V: torch.Tensor,
                batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """First-order change, through the later layers only, of the wrong items' mean log-probability when each head
    [L, H] and each OV component [L, H, r] is mean-ablated at the final position (summed over prompts).

    A change d written into layer l's attention output moves the metric by d . (g_l - g_final): its gradient there
    less the direct path's (the gradient at the final residual stream). ``means``: mean final z [L, H, d_head]."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    heads, comps = torch.zeros(L, H), torch.zeros(L, H, V.shape[-1])
    for i in range(0, len(task), batch_size):
        part = task.subset(slice(i, i + batch_size))
        acts: dict[str, torch.Tensor] = {}

        def keep(act, hook):
            act.retain_grad()
            acts[hook.name] = act
        with torch.enable_grad(), frozen(model):  # gradients of activations only, none into the weights
            last = logits_at(model, part.clean, hooks=[
                ("hook_embed", lambda x, hook: x.requires_grad_(True)),
                (lambda n: n.endswith(("attn.hook_z", "hook_attn_out")), keep), (f"blocks.{L - 1}.hook_resid_post", keep)])
            wrong_logprob(last[:, 0].float(), part).sum().backward()
        g_final = acts[f"blocks.{L - 1}.hook_resid_post"].grad[:, -1]
        for layer in range(L):
            z = acts[f"blocks.{layer}.attn.hook_z"][:, -1].detach()
            g = acts[f"blocks.{layer}.hook_attn_out"].grad[:, -1] - g_final  # [b, d_model], shared by the layer's heads
            for h in range(H):
                W_O = model.blocks[layer].attn.W_O[h].detach()
                heads[layer, h] += (((means[layer, h] - z[:, h]) @ W_O) * g).sum()
                k, k_mean = head_coords(model, z[:, h], (layer, h), V[layer, h]), head_coords(model, means[layer, h], (layer, h), V[layer, h])
                comps[layer, h] += ((k_mean - k) * (g @ V[layer, h])).sum(0)
    return heads, comps


def effect(model: HookedTransformer, tasks: dict[int, Task], make: Callable[[int, slice], list],
           base: dict[int, torch.Tensor]) -> float:
    """Mean rise, over every prompt of ``tasks``, of the wrong items' log-probability under hooks ``make(size, rows)``."""
    rise = [wrong_logprob(final_logits(model, t, lambda rows: make(size, rows)), t) - base[size] for size, t in tasks.items()]
    return float(torch.cat(rise).mean())


def find_inhibition(model: HookedTransformer, tasks: dict[int, Task], cfg: TalkingHeadsConfig, V: torch.Tensor,
                    state: dict[int, tuple[torch.Tensor, torch.Tensor]], note: Callable[[str], None] = lambda s: None
                    ) -> tuple[dict, list[dict], dict[Head, list[int]]]:
    """The inhibition heads on ``tasks`` (choose prompts; ``state``: their ``final_state`` by list length; V: every
    head's OV directions). Returns every candidate's measured effects, a row per inhibition head (its effect, its
    components' effects, single and cumulative) and each inhibition head's ``rank`` strongest components."""
    means = {s: z.mean(0) for s, (z, _) in state.items()}
    base = {s: wrong_logprob(logits, tasks[s]) for s, (_, logits) in state.items()}
    head_attr, comp_attr = 0, 0
    for s, t in tasks.items():
        a, c = attribution(model, t, means[s], V)
        head_attr, comp_attr = head_attr + a, comp_attr + c
    H = model.cfg.n_heads
    candidates = [(int(i) // H, int(i) % H) for i in head_attr.flatten().argsort(descending=True)[:cfg.candidates]]
    measured = {hd: effect(model, tasks, lambda s, rows, hd=hd: edit_hooks(model, {hd: (means[s][hd], None)}, rows,
                                                                           indirect=True), base) for hd in candidates}
    total = {hd: effect(model, tasks, lambda s, rows, hd=hd: edit_hooks(model, {hd: (means[s][hd], None)}, rows), base)
             for hd in candidates}
    chosen = [hd for hd in sorted(measured, key=measured.get, reverse=True) if measured[hd] > 0][:cfg.heads]
    note("inhibition heads (rise of the wrong items' log-prob when ablated, through later layers): "
         + ", ".join(f"{a}.{b} {measured[(a, b)]:+.3f}" for a, b in chosen))
    rows, components = [], {}
    for hd in chosen:
        def comp_hooks(idx, hd=hd):
            Vs = V[hd][:, idx]
            return lambda s, rows: edit_hooks(model, {hd: (Vs, head_coords(model, means[s][hd], hd, Vs))}, rows, indirect=True)
        top = comp_attr[hd].argsort(descending=True)[:6].tolist()
        single = {i: effect(model, tasks, comp_hooks([i]), base) for i in top}
        order = sorted(single, key=single.get, reverse=True)[:cfg.rank]
        cumulative = [effect(model, tasks, comp_hooks(order[:j]), base) for j in range(1, len(order) + 1)]
        components[hd] = order
        rows.append({"head": f"{hd[0]}.{hd[1]}", "effect": measured[hd], "total_effect": total[hd], "components": order,
                     "component_effects": {str(i): single[i] for i in top}, "cumulative_effects": cumulative,
                     "share": [c / measured[hd] for c in cumulative]})
    return {f"{a}.{b}": {"indirect": v, "total": total[(a, b)]} for (a, b), v in measured.items()}, rows, components


def position_codes(model: HookedTransformer, task: Task, head: Head, Vs: torch.Tensor) -> dict[str, torch.Tensor]:
    """What ``head`` would write from each list item's first and second mention, in subspace Vs [d_model, r]:
    ``first``/``again`` [n, k, r] (NaN where the answer is not mentioned again), and the head's attention at the
    final position to first and second mentions, summed over items [n]."""
    layer, h = head
    first, again, _ = item_positions(task)
    vs, pats = [], []

    def keep_v(v, hook):
        vs.append(v[:, :, h // (model.cfg.n_heads // v.shape[2])].detach())

    def keep_p(p, hook):
        pats.append(p[:, h, -1].detach())
    final_logits(model, task, lambda rows: [(f"blocks.{layer}.attn.hook_v", keep_v), (f"blocks.{layer}.attn.hook_pattern", keep_p)])
    v, pattern = torch.cat(vs), torch.cat(pats)  # [n, pos, d_head], [n, pos]
    rows = torch.arange(len(task))[:, None]
    coords = head_coords(model, v, head, Vs)  # [n, pos, r]
    ok = again >= 0
    again_c = torch.where(ok[..., None], coords[rows, again.clamp(min=0)], torch.nan)
    return {"first": coords[rows, first], "again": again_c, "attn_first": pattern[rows, first].sum(1),
            "attn_again": torch.where(ok, pattern[rows, again.clamp(min=0)], 0).sum(1)}


def decode_positions(fit: torch.Tensor, test: torch.Tensor) -> float:
    """Nearest-centroid accuracy of list position from coordinates: centroids from ``fit`` [n, k, r], scored on
    ``test`` [m, k, r] (NaN rows skipped)."""
    k = fit.shape[1]
    centroids = torch.stack([fit[:, i][~fit[:, i].isnan().any(-1)].mean(0) for i in range(k)])  # [k, r]
    x, label = test.reshape(-1, test.shape[-1]), torch.arange(k).repeat(len(test))
    ok = ~x.isnan().any(-1)
    pred = torch.cdist(x[ok], centroids).argmin(-1)
    return float((pred == label[ok]).float().mean())


def positional_components(fit: torch.Tensor, rank: int) -> list[int]:
    """The ``rank`` components whose coordinates [n, k, r] best separate list positions (between-position over
    within-position variance)."""
    means = torch.stack([fit[:, i][~fit[:, i].isnan().any(-1)].mean(0) for i in range(fit.shape[1])])  # [k, r]
    within = torch.stack([fit[:, i][~fit[:, i].isnan().any(-1)].var(0) for i in range(fit.shape[1])]).mean(0)
    return (means.var(0) / within.clamp(min=1e-12)).argsort(descending=True)[:rank].tolist()


def positions(model: HookedTransformer, choose: dict[int, Task], test: dict[int, Task], head: Head, V: torch.Tensor,
              components: list[int], rank: int) -> dict:
    """The inhibition head's positional index: list position decoded on test prompts from its inhibition components
    (``components``) and from the ``rank`` components that best separate positions on choose prompts (first mentions).
    V: the head's OV directions [d_model, r]."""
    out: dict = {"head": f"{head[0]}.{head[1]}", "by_length": {}}
    for size in choose:
        fit, held = (position_codes(model, t[size], head, V) for t in (choose, test))
        best = positional_components(fit["first"], rank)
        out["by_length"][str(size)] = {
            "chance": 1 / size, "positional_components": best,
            "attention_first": float(held["attn_first"].mean()), "attention_second": float(held["attn_again"].mean()),
            **{f"{where}_{space}": decode_positions(fit[key][..., idx], held[key][..., idx])
               for where, key in (("first_mention", "first"), ("second_mention", "again"))
               for space, idx in (("inhibition", components), ("positional", best))}}
        if size == max(choose):
            out["coords"] = held["first"][..., best].tolist()  # [n, k, rank] of the longest lists
    return out


@contextmanager
def scaled_components(model: HookedTransformer, spaces: dict[Head, torch.Tensor], alpha: float) -> Iterator[None]:
    """The weight edit: each head's W_O components in its subspace V [d_model, r] scaled by ``alpha`` (restored after)."""
    saved = {}
    with torch.no_grad():
        for (layer, h), V in spaces.items():
            W = model.blocks[layer].attn.W_O
            saved[(layer, h)] = W.data[h].clone()
            W.data[h] += (alpha - 1) * (W.data[h] @ V) @ V.T
    try:
        yield
    finally:
        with torch.no_grad():
            for (layer, h), w in saved.items():
                model.blocks[layer].attn.W_O.data[h] = w


def outcomes(model: HookedTransformer, tasks: dict[int, Task], make: Callable[[int, slice], list] = lambda s, rows: []
             ) -> dict[str, torch.Tensor]:
    """Per prompt of every task: correct (0/1), logit difference, list length and answer index, [N] each."""
    out: dict[str, list] = {"correct": [], "logit_diff": [], "n_items": [], "answer_index": []}
    for size, t in tasks.items():
        last = final_logits(model, t, lambda rows: make(size, rows))[:, None]
        out["correct"].append(t.correct(last).float())
        out["logit_diff"].append(t.metric(last))
        out["n_items"].append(torch.full((len(t),), size))
        out["answer_index"].append(item_positions(t)[2])
    return {k: torch.cat(v) for k, v in out.items()}


def representation_targets(model: HookedTransformer, tasks: dict[int, Task], spaces: dict[Head, torch.Tensor],
                           state: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> dict[int, dict[Head, torch.Tensor]]:
    """Per list length and head, the mean coordinates [k, r] at the final position of the correctly answered
    prompts with the answer at each list index (all prompts with that index where none is answered).
    ``state``: the prompts' ``final_state`` by list length."""
    out = {}
    for size, t in tasks.items():
        z, logits = state[size]
        ok = t.correct(logits[:, None])
        k_idx = item_positions(t)[2]
        out[size] = {}
        for hd, V in spaces.items():
            c = head_coords(model, z[:, hd[0], hd[1]], hd, V)
            rows = []
            for k in range(size):
                pick = (k_idx == k) & ok if ((k_idx == k) & ok).any() else (k_idx == k)
                rows.append(c[pick].mean(0) if pick.any() else c.mean(0))
            out[size][hd] = torch.stack(rows)
    return out


def edit_conditions(model: HookedTransformer, choose: dict[int, Task], test: dict[int, Task],
                    spaces: dict[Head, torch.Tensor], alpha: float, state: dict[int, tuple[torch.Tensor, torch.Tensor]]
                    ) -> dict[str, dict[str, torch.Tensor]]:
    """Test outcomes with the representation edit (targets from ``choose`` and its ``state``) and the weight edit."""
    targets = representation_targets(model, choose, spaces, state)
    index = {s: item_positions(t)[2] for s, t in test.items()}

    def make(s, rows):
        return edit_hooks(model, {hd: (V, targets[s][hd][index[s]]) for hd, V in spaces.items()}, rows)
    out = {"representation edit": outcomes(model, test, make)}
    with scaled_components(model, spaces, alpha):
        out["weight edit"] = outcomes(model, test)
    return out


def choose_alpha(model: HookedTransformer, choose: dict[int, Task], spaces: dict[Head, torch.Tensor],
                 alphas) -> tuple[float, dict[str, float]]:
    """The weight edit's scale with the best accuracy on the choose prompts (then logit difference)."""
    grid = {}
    for a in alphas:
        with scaled_components(model, spaces, a):
            o = outcomes(model, choose)
        grid[a] = (float(o["correct"].mean()), float(o["logit_diff"].mean()))
    return max(grid, key=grid.get), {str(a): v[0] for a, v in grid.items()}


def summarise(conditions: dict[str, dict[str, torch.Tensor]], n_boot: int, seed: int) -> dict:
    """Accuracy and logit difference per condition, their paired change from no edit, with 95% bootstrap intervals,
    and accuracy by list length and by (length, answer index)."""
    def ci(v):
        return mean_ci(v, n_boot, seed)
    none = conditions["none"]
    out: dict = {"overall": {}, "by_length": {}, "by_position": {}}
    for name, o in conditions.items():
        row = {"accuracy": ci(o["correct"]), "logit_diff": ci(o["logit_diff"])}
        if name != "none":
            row["accuracy_change"] = ci(o["correct"] - none["correct"])
            row["logit_diff_change"] = ci(o["logit_diff"] - none["logit_diff"])
        out["overall"][name] = row
        for size in none["n_items"].unique().tolist():
            at = none["n_items"] == size
            out["by_length"].setdefault(str(size), {})[name] = float(o["correct"][at].mean())
            for k in range(size):
                here = at & (none["answer_index"] == k)
                if here.any():
                    out["by_position"].setdefault(f"{size}:{k}", {})[name] = float(o["correct"][here].mean())
    return out


def study(model: HookedTransformer, cfg: TalkingHeadsConfig, note: Callable[[str], None] = lambda s: None) -> dict:
    """Inhibition heads and channels on choose prompts; positions and edits scored on held-out prompts."""
    choose = list_tasks(model, cfg.sizes, cfg.n, cfg.seed)
    test = list_tasks(model, cfg.sizes, cfg.n, cfg.seed + 1, exclude=choose)
    note(f"{sum(map(len, choose.values()))} choose and {sum(map(len, test.values()))} test prompts, lists of {list(cfg.sizes)}")
    V = subspaces(model)
    state = {s: final_state(model, t) for s, t in choose.items()}
    candidates, rows, components = find_inhibition(model, choose, cfg, V, state, note)
    result: dict = {"candidates": candidates, "inhibition_heads": rows}
    if not components:
        result["skipped"] = "no head's ablation raises the wrong items' log-probability: nothing to edit"
        return result
    spaces = {hd: V[hd][:, idx] for hd, idx in components.items()}
    top = next(iter(components))
    result["positions"] = positions(model, choose, test, top, V[top], components[top], cfg.rank)
    alpha, grid = choose_alpha(model, choose, spaces, cfg.alphas)
    note(f"weight edit: alpha {alpha} (choose-prompt accuracy by alpha: {grid})")
    conditions = {"none": outcomes(model, test), **edit_conditions(model, choose, test, spaces, alpha, state)}
    g = torch.Generator().manual_seed(cfg.seed)
    draws = []
    for _ in range(cfg.random_draws):
        rand = {}
        for hd, idx in components.items():
            rest = [i for i in range(V.shape[-1]) if i not in idx]
            rand[hd] = V[hd][:, [rest[int(i)] for i in torch.randperm(len(rest), generator=g)[:len(idx)]]]
        draws.append(edit_conditions(model, choose, test, rand, alpha, state))
    for name in ("representation edit", "weight edit"):
        conditions[f"random {name}"] = {k: torch.stack([d[name][k].float() for d in draws]).mean(0)
                                        for k in ("correct", "logit_diff")}
    result.update(alpha=alpha, alpha_grid=grid, edits=summarise(conditions, cfg.n_boot, cfg.seed))
    return result


def summary_markdown(result: dict, model_name: str, cfg: TalkingHeadsConfig) -> str:
    """Our numbers beside the paper's."""
    lines = [f"# Talking Heads on {model_name}", "",
             f"Laundry List prompts of {list(cfg.sizes)} items, {cfg.n} per length chose the heads, components and edit "
             "targets; as many other prompts score everything below.", ""]
    if "skipped" in result:
        return "\n".join(lines + [result["skipped"] + ".", ""])
    lines += ["## Inhibition heads and their OV components (choose prompts)", "",
              "| head | rise of wrong items' log-prob, through later layers (total) | components | share of the head's "
              "effect carried by 1, 2, 3 components |", "|---|---|---|---|"]
    for r in result["inhibition_heads"]:
        lines.append(f"| {r['head']} | {r['effect']:+.3f} ({r['total_effect']:+.3f}) | {r['components']} | "
                     + ", ".join(f"{s:.2f}" for s in r["share"]) + " |")
    p = result["positions"]
    lines += ["", f"Paper: {PAPER['components']}.", "",
              f"## Positional index of head {p['head']} (list position decoded on test prompts, nearest centroid)", "",
              "| items | chance | first mention: inhibition / positional subspace | second mention: inhibition / positional "
              "| attention at the end to first / second mentions |", "|---|---|---|---|---|"]
    for size, r in p["by_length"].items():
        lines.append(f"| {size} | {r['chance']:.2f} | {r['first_mention_inhibition']:.2f} / {r['first_mention_positional']:.2f} "
                     f"| {r['second_mention_inhibition']:.2f} / {r['second_mention_positional']:.2f} "
                     f"| {r['attention_first']:.2f} / {r['attention_second']:.2f} |")
    e = result["edits"]
    lines += ["", f"## Edits on test prompts (weight edit: components scaled by {result['alpha']}, chosen on choose prompts)", "",
              "| condition | accuracy [95% CI] | change in points [95% CI] | logit diff change [95% CI] |", "|---|---|---|---|"]
    for name, r in e["overall"].items():
        acc = f"{r['accuracy']['mean']:.3f} [{r['accuracy']['ci'][0]:.3f}, {r['accuracy']['ci'][1]:.3f}]"
        if name == "none":
            lines.append(f"| {name} | {acc} | | |")
            continue
        dc, dl = r["accuracy_change"], r["logit_diff_change"]
        lines.append(f"| {name} | {acc} | {100 * dc['mean']:+.1f} [{100 * dc['ci'][0]:+.1f}, {100 * dc['ci'][1]:+.1f}] | "
                     f"{dl['mean']:+.3f} [{dl['ci'][0]:+.3f}, {dl['ci'][1]:+.3f}] |")
    names = list(e["overall"])
    lines += ["", "Accuracy by list length:", "", "| items | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += [f"| {size} | " + " | ".join(f"{row[n]:.2f}" for n in names) + " |" for size, row in e["by_length"].items()]
    lines += ["", f"Paper: {PAPER['edits']}. Random rows average {cfg.random_draws} draws of other components of the "
              "same heads; by-position accuracies are in talking_heads.json.", ""]
    return "\n".join(lines)


def draw(result: dict):
    """Figure: the strongest head's item positions in 3-D (test prompts, longest lists); accuracy by list length."""
    def figure(plt):
        fig = plt.figure(figsize=(11, 4.5))
        c = torch.tensor(result["positions"]["coords"])  # [n, k, r]
        ax = fig.add_subplot(1, 2, 1, projection="3d" if c.shape[2] >= 3 else None)
        for k in range(c.shape[1]):
            ax.scatter(*[c[:, k, i].numpy() for i in range(min(3, c.shape[2]))], s=8, label=f"item {k}")
        ax.set_title(f"head {result['positions']['head']}: item positions")
        ax.legend(fontsize=7)
        ax = fig.add_subplot(1, 2, 2)
        by = result["edits"]["by_length"]
        for name in result["edits"]["overall"]:
            ax.plot([int(s) for s in by], [by[s][name] for s in by], marker="o", label=name)
        ax.set_xlabel("list length")
        ax.set_ylabel("test accuracy")
        ax.legend(fontsize=7)
        return fig
    return figure


def write(result: dict, folder, model_name: str, cfg: TalkingHeadsConfig):
    """``talking_heads.json``, ``figure.png`` and ``summary.md``, swapped in whole."""
    from saecircuits.circuits.study_common import write_study

    return write_study(folder, "talking_heads.json", {**result, "model": model_name, "config": cfg.model_dump(mode="json"),
                                                      "paper": PAPER},
                       summary_markdown(result, model_name, cfg), draw(result) if "edits" in result else None)

"""Circuit Component Reuse (Merullo, Eickhoff, Pavlick, ICLR 2024): the IOI and Colored Objects circuits share
heads, and setting a few middle-layer heads of Colored Objects to their IOI behaviour repairs the task.

Procedure (the repair script is not public; choices are ours and stated here):
1. **Circuits.** Each task's heads are scored by EAP-IG (``discovery.attribution``, counterfactual prompts of the
   task) on its train prompts; a circuit is the top k% of heads by |score|. Overlap = |A ∩ B| / k, against the
   hypergeometric null of two random k-head sets, and against a control task (greater-than).
2. **IOI behaviour.** At the final position, IOI's inhibition heads attend to the subject (the name not to be
   said). Each head's *inhibition attention* is its attention from the final position to the wrong answers'
   tokens (IOI: the subject's mentions; Colored Objects: the other two colours). The repaired heads are the
   ``repair_heads`` heads of the IOI circuit (top 10%) in the middle half of the layers whose inhibition
   attention is highest on IOI and lower on Colored Objects by the most (train prompts of both).
3. **Repair, on held-out Colored Objects prompts.** Those heads' final-position attention is set to their IOI
   behaviour: their mean IOI inhibition attention spread evenly over the wrong colours, the rest of the row
   scaled to keep its sum. Accuracy and logit difference before and after (paired 95% bootstrap intervals), the
   errors it fixes and makes, and the same edit of as many random middle-layer heads as the control.
4. **Downstream.** For each later head of the IOI circuit, the change of its direct effect on the logit
   difference (its output through the frozen final norm and the unembedding), ranked against its IOI importance
   (Spearman), as the IOI circuit predicts: heads that matter for IOI should move most.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformer_lens import HookedTransformer

from saecircuits.circuits import prompts
from saecircuits.circuits.config import ReuseConfig
from saecircuits.circuits.study_common import mean_ci, rank_correlation
from saecircuits.circuits.task import Task
from saecircuits.circuits.tasks import logits_at
from saecircuits.core.errors import SaecircuitsError

Head = tuple[int, int]
PAPER = {"overlap": "the IOI and Colored Objects circuits of GPT-2 Medium share 78% of their heads (controls 17-25%)",
         "repair": "adjusting four middle-layer heads raises Colored Objects accuracy from 49.6% to 93.7%; the "
                   "intervention's downstream effects match path patching with Spearman 0.69"}


def task_sets(model: HookedTransformer, cfg: ReuseConfig) -> dict[str, tuple[Task, Task]]:
    """(train, test) prompts of IOI, Colored Objects and the control task, disjoint."""
    from saecircuits.circuits.splits import build_splits

    out = {}
    for name in ("ioi", cfg.control):
        s = build_splits(name, model, cfg.n_train, 1, cfg.n_test, cfg.seed)
        out[name] = (s.train, s.test)
    train = prompts.colored_objects(model, n=cfg.n_train, seed=cfg.seed)
    test = prompts.colored_objects(model, n=cfg.n_test + cfg.n_train, seed=cfg.seed + 1)
    seen = {tuple(r.tolist()) for r in train.clean}
    test = test.subset([i for i, r in enumerate(test.clean) if tuple(r.tolist()) not in seen][:cfg.n_test])
    if len(test) < 8:
        raise SaecircuitsError(f"component-reuse: only {len(test)} held-out colored_objects prompts")
    out["colored_objects"] = (train, test)
    return out


def head_scores(model: HookedTransformer, task: Task, ig_steps: int, batch_size: int = 16) -> torch.Tensor:
    """EAP-IG score of every head [L, H] (the sum over its outgoing edges, signed)."""
    from saecircuits.circuits.discovery.attribution import edge_attribution, node_attribution
    from saecircuits.circuits.masked_forward import MaskedForward

    forward = MaskedForward(model)
    nodes = node_attribution(edge_attribution(forward, task, ig_steps, batch_size))
    return nodes[forward.graph.head_nodes()].reshape(model.cfg.n_layers, model.cfg.n_heads)


def top_heads(scores: torch.Tensor, k: int) -> set[Head]:
    H = scores.shape[1]
    return {(int(i) // H, int(i) % H) for i in scores.abs().flatten().argsort(descending=True)[:k]}


def overlap(a: torch.Tensor, b: torch.Tensor, percents) -> list[dict]:
    """Overlap |A ∩ B| / k of the top-k% head sets of two scorings, with the hypergeometric null's mean, 95th
    percentile and the chance of an overlap at least as large."""
    from scipy.stats import hypergeom

    n = a.numel()
    rows = []
    for p in percents:
        k = max(1, round(p / 100 * n))
        shared = len(top_heads(a, k) & top_heads(b, k))
        null = hypergeom(n, k, k)
        rows.append({"percent": p, "k": k, "shared": shared, "overlap": shared / k, "null_mean": float(null.mean()) / k,
                     "null_95": float(null.ppf(0.95)) / k, "p_value": float(null.sf(shared - 1))})
    return rows


def wrong_mask(task: Task) -> torch.Tensor:
    """[n, pos]: the positions holding a wrong answer's token (IOI: the subject's mentions; Colored Objects: the
    other colours)."""
    return (task.clean[:, :, None] == task.wrong[:, None, :]).any(-1)


def run(model: HookedTransformer, task: Task, hooks: Callable[[slice], list] = lambda rows: [], batch_size: int = 16
        ) -> dict[str, torch.Tensor]:
    """Under ``hooks(rows)``: the final position's logits [n, vocab], every head's attention from it [n, L, H, pos]
    and every head's direct effect on the logit difference [n, L, H] (through the frozen final norm)."""
    logits, pats, direct = [], [], []
    for i in range(0, len(task), batch_size):
        rows = slice(i, i + batch_size)
        sub = task.subset(rows)
        cache: dict[str, torch.Tensor] = {}

        def keep(x, hook):
            cache[hook.name] = x.detach()
        names = lambda n: n.endswith(("hook_pattern", "hook_z")) or n == "ln_final.hook_scale"  # noqa: E731
        with torch.no_grad():
            logits.append(logits_at(model, sub.clean, hooks=hooks(rows) + [(names, keep)])[:, 0].float())
        L = model.cfg.n_layers
        pats.append(torch.stack([cache[f"blocks.{l}.attn.hook_pattern"][:, :, -1] for l in range(L)], 1))
        W_U = model.W_U.detach()
        direction = W_U[:, sub.answers] - W_U[:, sub.wrong].mean(-1)  # [d_model, b]
        scale = cache["ln_final.hook_scale"][:, -1]  # [b, 1]
        direct.append(torch.stack([
            torch.einsum("bhd,hdm,mb->bh", cache[f"blocks.{l}.attn.hook_z"][:, -1], model.blocks[l].attn.W_O.detach(),
                         direction) / scale for l in range(L)], 1))
    return {"logits": torch.cat(logits), "pattern": torch.cat(pats), "direct": torch.cat(direct)}


def inhibition_attention(task: Task, pattern: torch.Tensor) -> torch.Tensor:
    """Each head's attention from the final position to the wrong answers' tokens, [n, L, H]."""
    return (pattern * wrong_mask(task)[:, None, None].float()).sum(-1)


def pattern_hooks(task: Task, heads: dict[Head, float], rows: slice) -> list:
    """Hooks that set each head's final-position attention to the wrong answers' tokens to ``mass`` (spread
    evenly), the rest of the row scaled to sum to 1 - mass."""
    mask = wrong_mask(task)[rows].float()  # [b, pos]
    even = mask / mask.sum(-1, keepdim=True)

    def make(hs: dict[int, float]):
        def hook(p, hook):
            for h, mass in hs.items():
                rest = p[:, h, -1] * (1 - mask)
                p[:, h, -1] = mass * even + (1 - mass) * rest / rest.sum(-1, keepdim=True).clamp(min=1e-9)
            return p
        return hook
    layers: dict[int, dict[int, float]] = {}
    for (layer, h), mass in heads.items():
        layers.setdefault(layer, {})[h] = mass
    return [(f"blocks.{layer}.attn.hook_pattern", make(hs)) for layer, hs in layers.items()]


def choose_repair(model: HookedTransformer, ioi: Task, cobj: Task, ioi_scores: torch.Tensor, n_heads: int
                  ) -> tuple[dict[Head, float], list[dict]]:
    """The heads to repair (train prompts) with their IOI inhibition attention, and every middle-layer IOI circuit
    head's inhibition attention on both tasks."""
    L, H = ioi_scores.shape
    a_ioi = inhibition_attention(ioi, run(model, ioi)["pattern"]).mean(0)
    a_co = inhibition_attention(cobj, run(model, cobj)["pattern"]).mean(0)
    circuit = top_heads(ioi_scores, max(1, round(0.1 * L * H)))
    middle = sorted((hd for hd in circuit if L // 4 <= hd[0] < 3 * L // 4), key=lambda hd: float(a_co[hd] - a_ioi[hd]))
    rows = [{"head": f"{a}.{b}", "ioi": float(a_ioi[a, b]), "colored_objects": float(a_co[a, b]),
             "ioi_score": float(ioi_scores[a, b])} for a, b in middle]
    chosen = {hd: float(a_ioi[hd]) for hd in middle[:n_heads] if a_ioi[hd] > a_co[hd]}
    return chosen, rows


def outcome(task: Task, r: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    last = r["logits"][:, None]
    return {"correct": task.correct(last).float(), "logit_diff": task.metric(last)}


def repair(model: HookedTransformer, test: Task, chosen: dict[Head, float], ioi_scores: torch.Tensor,
           cfg: ReuseConfig) -> dict:
    """The repair on held-out Colored Objects prompts against random middle-layer heads given the same masses,
    and the downstream heads' change against their IOI importance."""
    L, H = ioi_scores.shape
    base = run(model, test)
    fixed = run(model, test, lambda rows: pattern_hooks(test, chosen, rows))
    before, after = outcome(test, base), outcome(test, fixed)
    g = torch.Generator().manual_seed(cfg.seed)
    pool = [(a, b) for a in range(L // 4, 3 * L // 4) for b in range(H) if (a, b) not in chosen]
    randoms = []
    for _ in range(cfg.random_draws):
        draw = [pool[int(i)] for i in torch.randperm(len(pool), generator=g)[:len(chosen)]]
        masses = dict(zip(draw, chosen.values()))
        randoms.append(outcome(test, run(model, test, lambda rows, m=masses: pattern_hooks(test, m, rows))))
    rand = {k: torch.stack([r[k] for r in randoms]).mean(0) for k in before}

    def ci(v):
        return mean_ci(v, cfg.n_boot, cfg.seed)
    wrong_before = before["correct"] == 0
    later = [hd for hd in top_heads(ioi_scores, max(1, round(0.1 * L * H))) if hd[0] > max(a for a, _ in chosen)]
    change = (fixed["direct"] - base["direct"]).mean(0)
    return {
        "accuracy": {"before": ci(before["correct"]), "after": ci(after["correct"]), "random_heads": ci(rand["correct"])},
        "accuracy_change": ci(after["correct"] - before["correct"]),
        "random_accuracy_change": ci(rand["correct"] - before["correct"]),
        "logit_diff_change": ci(after["logit_diff"] - before["logit_diff"]),
        "random_logit_diff_change": ci(rand["logit_diff"] - before["logit_diff"]),
        "errors_fixed": float((after["correct"][wrong_before] == 1).float().mean()) if wrong_before.any() else None,
        "errors_made": float((after["correct"][~wrong_before] == 0).float().mean()) if (~wrong_before).any() else None,
        "downstream": {"heads": [f"{a}.{b}" for a, b in later],
                       "direct_change": [float(change[hd]) for hd in later],
                       "ioi_score": [float(ioi_scores[hd]) for hd in later],
                       **dict(zip(("spearman", "spearman_p"),
                                  rank_correlation([float(ioi_scores[hd]) for hd in later], [float(change[hd]) for hd in later])))},
    }


def study(model: HookedTransformer, cfg: ReuseConfig, note: Callable[[str], None] = lambda s: None) -> dict:
    """Circuit overlap (with nulls) on train prompts; the repair scored on held-out Colored Objects prompts."""
    from saecircuits.circuits.tasks import evaluate

    sets = task_sets(model, cfg)
    result: dict = {"tasks": {}}
    for name, (_, test) in sets.items():
        r = evaluate(model, test)
        result["tasks"][name] = {k: r[k] for k in ("clean_accuracy", "clean_metric", "chance", "can_do")}
    if not result["tasks"]["colored_objects"]["can_do"]:
        note("the model does not do colored_objects above chance: the repair is measured anyway and flagged")
    scores = {}
    for name, (train, _) in sets.items():
        scores[name] = head_scores(model, train, cfg.ig_steps)
        note(f"{name}: heads scored by EAP-IG on {len(train)} train prompts")
    result["overlap"] = {"ioi-colored_objects": overlap(scores["ioi"], scores["colored_objects"], cfg.percents),
                         f"ioi-{cfg.control}": overlap(scores["ioi"], scores[cfg.control], cfg.percents),
                         f"colored_objects-{cfg.control}": overlap(scores["colored_objects"], scores[cfg.control], cfg.percents)}
    result["scores"] = {k: v.tolist() for k, v in scores.items()}
    chosen, rows = choose_repair(model, sets["ioi"][0], sets["colored_objects"][0], scores["ioi"], cfg.repair_heads)
    result["middle_circuit_heads"] = rows
    if not chosen:
        result["repair"] = {"skipped": "no middle-layer IOI circuit head attends to the wrong answers more on IOI "
                                       "than on colored objects"}
        return result
    result["repaired_heads"] = {f"{a}.{b}": m for (a, b), m in chosen.items()}
    note("repaired heads (IOI inhibition attention): " + ", ".join(f"{k} {v:.2f}" for k, v in result["repaired_heads"].items()))
    result["repair"] = repair(model, sets["colored_objects"][1], chosen, scores["ioi"], cfg)
    return result


def summary_markdown(result: dict, model_name: str, cfg: ReuseConfig) -> str:
    """Our numbers beside the paper's."""
    t = result["tasks"]
    lines = [f"# Circuit component reuse on {model_name}", "",
             "Clean accuracy (test prompts): " + ", ".join(f"{k} {v['clean_accuracy']:.2f} (chance {v['chance']:.2f})"
                                                          for k, v in t.items()) + ".", "",
             f"## Circuit overlap (EAP-IG on {cfg.n_train} train prompts a task; top k% of heads)", "",
             "| pair | " + " | ".join(f"{p}% (k={r['k']})" for p, r in zip(cfg.percents, result["overlap"]["ioi-colored_objects"]))
             + " |", "|---" * (len(cfg.percents) + 1) + "|"]
    for pair, rows in result["overlap"].items():
        lines.append(f"| {pair} | " + " | ".join(f"{r['overlap']:.2f} (null {r['null_mean']:.2f}, 95% {r['null_95']:.2f}; "
                                                 f"p {r['p_value']:.1g})" for r in rows) + " |")
    lines += ["", f"Paper: {PAPER['overlap']}.", ""]
    rep = result["repair"]
    if "skipped" in rep:
        return "\n".join(lines + [f"Repair: {rep['skipped']}.", ""])
    heads = ", ".join(f"{k} ({v:.2f})" for k, v in result["repaired_heads"].items())

    def cell(r, scale=100):
        d = 1 if scale == 100 else 3
        return f"{scale * r['mean']:+.{d}f} [{scale * r['ci'][0]:+.{d}f}, {scale * r['ci'][1]:+.{d}f}]"
    a = rep["accuracy"]
    d = rep["downstream"]
    sp = "n/a" if d["spearman"] is None else f"{d['spearman']:.2f} (p = {d['spearman_p']:.2g}, {len(d['heads'])} heads)"
    fixed = "n/a" if rep["errors_fixed"] is None else f"{rep['errors_fixed']:.2f}"
    made = "n/a" if rep["errors_made"] is None else f"{rep['errors_made']:.2f}"
    lines += [f"## Repair of Colored Objects ({cfg.n_test} held-out prompts)", "",
              f"Heads set to their IOI behaviour (their IOI attention to the wrong answers): {heads}.", "",
              "| | accuracy [95% CI] | change, points [95% CI] | logit diff change [95% CI] |", "|---|---|---|---|",
              f"| before | {a['before']['mean']:.3f} [{a['before']['ci'][0]:.3f}, {a['before']['ci'][1]:.3f}] | | |",
              f"| repaired | {a['after']['mean']:.3f} [{a['after']['ci'][0]:.3f}, {a['after']['ci'][1]:.3f}] | "
              f"{cell(rep['accuracy_change'])} | {cell(rep['logit_diff_change'], 1)} |",
              f"| random heads, same edit | {a['random_heads']['mean']:.3f} | {cell(rep['random_accuracy_change'])} | "
              f"{cell(rep['random_logit_diff_change'], 1)} |", "",
              f"Errors fixed: {fixed} of the prompts wrong before; errors made: {made} of those right before.",
              f"Downstream: {len(d['heads'])} later IOI-circuit heads; Spearman of their IOI score with the change of "
              f"their direct effect on the logit difference: {sp}.", "", f"Paper: {PAPER['repair']}.", ""]
    return "\n".join(lines)


def write(result: dict, folder, model_name: str, cfg: ReuseConfig):
    """``component_reuse.json``, ``figure.png`` (overlap against k, with the null) and ``summary.md``."""
    from saecircuits.circuits.study_common import write_study

    def figure(plt):
        fig, ax = plt.subplots(figsize=(6, 4))
        for pair, rows in result["overlap"].items():
            ax.plot([r["percent"] for r in rows], [r["overlap"] for r in rows], marker="o", label=pair)
        rows = result["overlap"]["ioi-colored_objects"]
        ax.plot([r["percent"] for r in rows], [r["null_95"] for r in rows], "k--", label="random, 95th percentile")
        ax.set_xlabel("circuit size (% of heads)")
        ax.set_ylabel("overlap")
        ax.legend(fontsize=7)
        return fig
    return write_study(folder, "component_reuse.json", {**result, "model": model_name, "config": cfg.model_dump(mode="json"),
                                                        "paper": PAPER}, summary_markdown(result, model_name, cfg), figure)

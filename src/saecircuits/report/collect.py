"""Gather everything a report shows from a run folder into one ``results.json``-shaped dict.

The run folder is what ``saecircuits demo`` writes (``train/``, ``dashboards/``, ``matching/``,
``heads/``, ``circuit/``, ``layers/``, each with a ``stage.json`` marker); a section whose stage is
missing holds ``{"missing": reason}``. Every number the report prints or plots is in this dict, and
every path in it is relative to the report folder (links to dashboard pages are under keys named
``href`` or ending in ``_href``).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import re
from pathlib import Path

from saecircuits.core.errors import SaecircuitsError
from saecircuits.core.files import plain_json, read_json
from saecircuits.core.tensors import load_tensors
from saecircuits.layerwise import results as layer_results
from saecircuits.matching.outputs import pair_folder
from saecircuits.matching.result import MatchedPair, MatchResult
from saecircuits.report.attention import attention_section
from saecircuits.report.studies import collect_studies
from saecircuits.training.summary import SpliceMetrics, TrainedSAE, TrainingSummary, read_summary

SCHEMA = "saecircuits.report/1"
PACKAGES = ("saecircuits", "torch", "transformer-lens", "sae-lens", "transformers", "numpy", "matplotlib",
            "networkx", "wandb")
KINDS = ("Q", "K", "V")


def collect(run_dir: str | Path, report_dir: str | Path | None = None, model=None, attention: bool = True,
            top_features: int = 10, top_pairs: int = 10, top_edges: int = 10, attention_heads: int = 6,
            curve_points: int = 200, studies: str | Path | None = None) -> dict:
    """The report's results dict for ``run_dir`` (links relative to ``report_dir``, default ``run_dir/report``).

    ``model``: the run's model (a HookedTransformer), used once for the circuit heads' attention patterns on
    the task's first clean prompt; without it the model is loaded by name when ``attention`` is true.
    ``studies``: a folder of seed-paper study outputs (``saecircuits study ...``, e.g. circuits/results)."""
    run = Path(run_dir).resolve()
    if not run.is_dir():
        raise SaecircuitsError(f"run folder {run_dir} does not exist", "pass the folder saecircuits demo wrote (--out)")
    report = Path(report_dir).resolve() if report_dir is not None else run / "report"
    ctx = _Context(run, report)
    results: dict = {"schema": SCHEMA}
    results["meta"] = _meta(ctx)
    results["training"] = _section(ctx, "train", lambda: _training(ctx, curve_points))
    results["dashboards"] = _section(ctx, "dashboards", lambda: _dashboards(ctx, top_features))
    results["matching"] = _section(ctx, "matching", lambda: _matching(ctx, top_pairs))
    results["heads"] = _section(ctx, "heads", lambda: _heads(ctx, top_edges))
    results["circuit"] = _section(ctx, "circuit", lambda: _circuit(ctx))
    results["attention"] = attention_section(results, model, attention, attention_heads)
    results["head_pages"] = _head_pages(ctx, results)
    results["layers"] = _section(ctx, "layers", lambda: _layers(ctx))
    results["studies"] = collect_studies(studies)
    configs = {"matching": results["matching"].get("config"), "heads": results["heads"].get("config"),
               "circuit": results["circuit"].get("config")}
    results["meta"]["seeds"].update(_seeds({k: {"settings": v} for k, v in configs.items() if v}))
    if not any("missing" not in results[s] for s in ("training", "dashboards", "matching", "heads", "circuit", "layers")):
        raise SaecircuitsError(f"{run_dir} holds no finished stage (no train/, circuit/, ... with a stage.json)",
                               "pass the folder saecircuits demo wrote (--out)")
    return ctx.relative(results)


class _Context:
    def __init__(self, run: Path, report: Path):
        self.run, self.report = run, report
        self.sae_names: dict[str, str] = {}  # hook -> SAE name (the training/dashboards folder name)

    def href(self, path: Path) -> str:
        """``path`` relative to the report folder, with forward slashes."""
        return Path(os.path.relpath(path, self.report)).as_posix()

    def feature_href(self, sae_name: str | None, feature: int) -> str | None:
        if sae_name is None:
            return None
        page = self.run / "dashboards" / sae_name / "features" / f"{int(feature)}.html"
        return self.href(page) if page.is_file() else None

    def relative(self, obj):
        """Every string that is an absolute path inside the run folder, made relative to the report folder."""
        if isinstance(obj, dict):
            return {k: self.relative(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self.relative(v) for v in obj]
        if isinstance(obj, str) and obj.startswith("/"):
            p = Path(obj)
            if p == self.run or self.run in p.parents:
                return self.href(p)
        return obj


def _section(ctx: _Context, stage: str, fn) -> dict:
    marker = ctx.run / stage / "stage.json"
    if not marker.is_file():
        return {"missing": f"the {stage} stage has not finished ({stage}/stage.json is absent); "
                           f"finish it with: saecircuits demo --out {ctx.run}"}
    return fn()


def _stage(ctx: _Context, stage: str) -> dict:
    marker = ctx.run / stage / "stage.json"
    return read_json(marker, what="stage marker") if marker.is_file() else {}


# --- meta -----------------------------------------------------------------------------------------

def _versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _meta(ctx: _Context) -> dict:
    config = read_json(ctx.run / "demo_config.json", what="run config") if (ctx.run / "demo_config.json").is_file() else {}
    stages = {}
    for s in ("train", "dashboards", "matching", "heads", "circuit", "layers"):
        st = _stage(ctx, s)
        if st:
            stages[s] = {"settings": st.get("settings"), "seconds": st.get("seconds")}
    model = config.get("model")
    if model is None:
        model = (stages.get("train", {}).get("settings") or {}).get("model") or (stages.get("circuit", {}).get("settings") or {}).get("model")
    hub = None
    if model:
        from saecircuits.model.loading import offline_model  # lazy: it imports TransformerLens (seconds)

        spec = offline_model(model)
        hub = spec.hf_name if spec else model
    return {
        "title": f"saecircuits report: {model or 'run'}" + (f", {config['task']} circuit" if config.get("task") else ""),
        "run": ctx.run.name, "model": model, "hub_name": hub, "config": config, "stages": stages,
        "seeds": _seeds(stages), "versions": _versions(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "saecircuits report --from results.json --out DIR",
    }


def _seeds(stages: dict) -> dict:
    """Every seed in the stages' settings, by where it was found (``train.store.seed``, ``train.saes[0].seed``, ...)."""
    seeds: dict = {}

    def walk(obj, where: str) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                if k == "seed" and isinstance(v, int):
                    seeds[where or k] = v
                else:
                    walk(v, f"{where}.{k}" if where else k)
        elif isinstance(obj, list):
            for i, v in enumerate(obj):
                walk(v, f"{where}[{i}]")

    for stage, d in stages.items():
        walk(d.get("settings"), stage)
    return seeds


# --- training -------------------------------------------------------------------------------------

_CURVES = ("loss", "mse", "explained_variance", "l0", "dead")


def _label(hook: str) -> str:
    """A short name for an SAE's site: ``L6`` for the residual stream after block 6, else the hook."""
    parts = hook.split(".")
    if len(parts) == 3 and parts[0] == "blocks" and parts[2] == "hook_resid_post":
        return f"L{parts[1]}"
    return hook


def _sae_metrics(s: TrainedSAE) -> dict:
    """An SAE's columns of the training table: what it is and its held-out metrics (None where absent)."""
    splice = s.splice or SpliceMetrics()
    return {"architecture": s.architecture, "d_sae": s.d_sae, "k": s.k, "lr": s.lr, "tokens": s.tokens, "l0": s.l0,
            "explained_variance": s.explained_variance, "fvu": s.fvu, "mse": s.mse, "dead_latents": s.dead_latents,
            "dense_latents": s.dense_latents, "ce_clean": splice.ce_clean, "ce_with_sae": splice.ce_with_sae,
            "ce_zero_ablation": splice.ce_zero_ablation, "ce_loss_recovered": splice.ce_loss_recovered,
            "kl_to_clean": splice.kl_to_clean}


def _training(ctx: _Context, curve_points: int) -> dict:
    folder = ctx.run / "train"
    summary = read_summary(folder) if (folder / "summary.json").is_file() \
        else TrainingSummary.from_json(_stage(ctx, "train").get("result", {}))
    saes = []
    for name, s in summary.saes.items():
        row = {"name": name, "label": _label(s.hook if s.hook is not None else name), "hook": s.hook,
               "folder_href": ctx.href(folder / "saes" / name)}
        row.update(_sae_metrics(s))
        saes.append(row)
        if s.hook:
            ctx.sae_names[s.hook] = name
    history = read_json(folder / "history.json", what="training history") if (folder / "history.json").is_file() else []
    if len(history) > curve_points:  # evenly spaced, always the last
        step = len(history) / curve_points
        history = [history[int(i * step)] for i in range(curve_points - 1)] + [history[-1]]
    curves = {"tokens": [h.get("tokens") for h in history], "saes": {}}
    for s in saes:
        curves["saes"][s["name"]] = {k: [(h.get(s["name"]) or {}).get(k) for h in history] for k in _CURVES}
    return {"model": summary.model, "tokens": summary.tokens, "steps": summary.steps,
            "seconds": summary.seconds, "tokens_per_second": summary.tokens_per_second,
            "saes": saes, "curves": curves}


# --- dashboards -----------------------------------------------------------------------------------

def _dashboards(ctx: _Context, top: int) -> dict:
    folder = ctx.run / "dashboards"
    saes = []
    for sub in sorted(p for p in folder.iterdir() if (p / "summary.json").is_file()):
        s = read_json(sub / "summary.json", what="dashboard summary")
        stats = read_json(sub / "stats.json", what="dashboard statistics") if (sub / "stats.json").is_file() else {}
        live = [f for f in stats.get("features", []) if not f.get("dead") and (f.get("fired") or 0) >= 5]
        live.sort(key=lambda f: (-(f.get("max_act") or 0.0), f["id"]))
        features = [{"id": f["id"], "density": f.get("density"), "fired": f.get("fired"), "max_act": f.get("max_act"),
                     "mean_act": f.get("mean_act"), "top_tokens": list(f.get("top_tokens") or [])[:5],
                     "href": ctx.feature_href(sub.name, f["id"])} for f in live[:top]]
        hook = s.get("hook")
        if hook and hook not in ctx.sae_names:
            ctx.sae_names[hook] = sub.name
        saes.append({"name": sub.name, "label": _label(hook or sub.name), "hook": hook, "model": s.get("model"),
                     "href": ctx.href(sub / "index.html"), "n_features": s.get("n_features"), "n_live": s.get("n_live"),
                     "n_dead": s.get("n_dead"), "tokens": s.get("tokens"), "text": s.get("text"),
                     "seconds": (s.get("seconds") or {}).get("total"),
                     "selection": f"the {top} live features (fired >= 5 times) with the largest activation",
                     "features": features})
    return {"saes": saes}


# --- matching -------------------------------------------------------------------------------------

_PAIR_NUMBERS = ("tokens", "alive_a", "alive_b", "n_pairs", "n_kept", "n_special_only", "mean_r", "median_r", "q10_r",
                 "q90_r", "share_r_gt_0.5", "share_r_gt_0.7", "share_r_gt_0.9", "mean_cos", "median_cos")
_SIMILARITY = ("score", "null_mean", "null_std", "p_value", "n_null")


def _matching(ctx: _Context, top: int) -> dict:
    folder = ctx.run / "matching"
    if not (folder / "match.json").is_file():
        result = _stage(ctx, "matching").get("result", {})
        return {"missing": result.get("skipped", "matching/match.json is absent")}
    match = MatchResult.from_json(read_json(folder / "match.json", what="matching results"))
    hooks = {name: s.hook for name, s in match.saes.items()}
    pairs = []
    for r in match.results:
        s = r.summary
        sae_a, sae_b = ctx.sae_names.get(r.hook_a), ctx.sae_names.get(r.hook_b)
        table = pair_folder(folder, r.a, r.b) / "table.json"
        rows = [MatchedPair.from_json(x) for x in read_json(table, what="matched-feature table")] if table.is_file() else []
        kept = sorted((x for x in rows if x.kept and x.r is not None), key=lambda x: (-x.r, x.a))
        similarity = {src: {m: {k: v.get(k) for k in _SIMILARITY} for m, v in d.items() if isinstance(v, dict)}
                      for src, d in (r.similarity or {}).items()}
        pairs.append({
            "a": r.a, "b": r.b, "hook_a": r.hook_a, "hook_b": r.hook_b, "sae_a": sae_a, "sae_b": sae_b,
            "method": r.method, **{k: s.get(k) for k in _PAIR_NUMBERS}, "similarity": similarity,
            "top": [{"a": x.a, "b": x.b, "r": x.r, "cos": x.cos, "fires_a": x.fires_a, "fires_b": x.fires_b,
                     "top_tokens_a": x.top_tokens_a[:5], "top_tokens_b": x.top_tokens_b[:5],
                     "a_href": ctx.feature_href(sae_a, x.a), "b_href": ctx.feature_href(sae_b, x.b)}
                    for x in kept[:top]],
        })
    similarity = {}
    for f in sorted(folder.glob("similarity_*.json")):
        m = read_json(f, what="similarity matrix")
        similarity[m.get("value", f.stem.removeprefix("similarity_"))] = m
    cfg = match.config
    return {"saes": hooks, "models": match.models, "config": cfg, "method": cfg.get("method"), "tokens": cfg.get("tokens"),
            "null": cfg.get("null"), "min_fires": cfg.get("min_fires"), "timing": match.timing, "pairs": pairs,
            "similarity": similarity}


# --- heads ----------------------------------------------------------------------------------------

def _heads(ctx: _Context, top: int) -> dict:
    folder = ctx.run / "heads"
    summary = read_json(folder / "summary.json", what="head graph summary") if (folder / "summary.json").is_file() \
        else _stage(ctx, "heads").get("result", {})
    graph = read_json(folder / "heads.json", what="head graph") if (folder / "heads.json").is_file() else {"nodes": [], "edges": []}
    channels = {(e["source"], e["target"], k): e.get(f"{k}_channels") for e in graph["edges"] for k in KINDS}
    top_edges = {}
    for kind, rows in (summary.get("top_edges") or {}).items():
        top_edges[kind] = [{**e, "channels": channels.get((e["sender"], e["receiver"], kind))} for e in rows[:top]]
    return {"model": summary.get("model"), "n_layers": summary.get("n_layers"), "n_heads": summary.get("n_heads"),
            "n_key_value_heads": summary.get("n_key_value_heads"), "seconds": summary.get("seconds"),
            "pairs": summary.get("pairs"), "n_nodes": len(graph["nodes"]), "n_edges": len(graph["edges"]),
            "edge_kinds": {k: sum(1 for e in graph["edges"] if e.get("type") == k) for k in KINDS},
            "config": summary.get("config"), "note": (graph.get("graph") or {}).get("weights"), "top_edges": top_edges}


def _weight_edges(ctx: _Context) -> list[dict]:
    """The head graph's kept edges (heads.json), one row per edge: sender, receiver, its type, score, z."""
    path = ctx.run / "heads" / "heads.json"
    if not path.is_file():
        return []
    return [{"sender": e["source"], "receiver": e["target"], "type": e.get("type"), "types": e.get("types"),
             "score": e.get("score"), "z": e.get("z")} for e in read_json(path, what="head graph")["edges"]]


def _circuit_composition(ctx: _Context, heads: list[str], n_heads: int, per_receiver: int = 2,
                         min_z: float = 3.0) -> dict:
    """Q/K/V composition between the circuit's heads, read from the weight graph's full score arrays:
    for each circuit receiver its ``per_receiver`` strongest edges (by z, at least ``min_z``) from circuit senders."""
    path = ctx.run / "heads" / "scores.safetensors"
    rule = f"for each circuit head, its {per_receiver} strongest composition edges (z >= {min_z:g}) from earlier circuit heads"
    if not path.is_file():
        return {"missing": "heads/scores.safetensors is absent", "edges": []}
    scores = load_tensors(path, what="head composition scores")
    index = {h: int(h.split(".")[0]) * n_heads + int(h.split(".")[1]) for h in heads}
    edges = []
    for r in heads:
        cands = []
        for s in heads:
            if int(s.split(".")[0]) >= int(r.split(".")[0]):
                continue
            for k in KINDS:
                z = float(scores[f"{k}_z"][index[s], index[r]])
                if z == z and z >= min_z:
                    cands.append({"sender": s, "receiver": r, "type": k, "score": float(scores[k][index[s], index[r]]), "z": z})
        edges += sorted(cands, key=lambda e: -e["z"])[:per_receiver]
    return {"rule": rule, "edges": edges}


# --- circuit --------------------------------------------------------------------------------------

def _circuit(ctx: _Context) -> dict:
    """The circuit stage's comparison (circuit.json, methods.json, robustness.json, as ``circuit-methods`` writes
    them): the reported head circuit and its test faithfulness, every method's curve, the robustness matrix."""
    folder = ctx.run / "circuit"
    if not (folder / "circuit.json").is_file():
        return {"missing": "circuit/circuit.json is absent"}
    circuit = read_json(folder / "circuit.json", what="circuit")
    methods = read_json(folder / "methods.json", what="circuit methods")
    robust = read_json(folder / "robustness.json", what="circuit robustness")
    robust = robust if isinstance(robust, dict) else {}
    head = (circuit.get("head_circuit") or circuit.get("head_circuit_mlps_kept")) if isinstance(circuit, dict) else None
    graph = methods.get("graph", {}) if isinstance(methods, dict) else {}
    if not isinstance(head, dict) or not {"method", "count", "val_f", "test"} <= set(head) \
            or not {"n_layers", "heads_per_layer"} <= set(graph):
        raise SaecircuitsError(f"{folder} does not hold a head circuit of saecircuits circuit-methods "
                               "(circuit.json head_circuit with method, count, val_f, test; methods.json graph)",
                               "rerun the circuit stage (delete the folder, then saecircuits demo)")
    heads, mlps = list(circuit["heads"]), list(circuit.get("mlps", []))
    edge = circuit.get("edge_circuit")
    data_edges = _edges_between((edge or {}).get("members", []), set(heads) | set(mlps) | {"logits"})
    composition = _circuit_composition(ctx, heads, graph["heads_per_layer"])
    scores = _node_scores(methods.get("node_scores") or {}, graph["n_layers"], graph["heads_per_layer"])
    rows = []
    for h in heads:
        L, i = (int(x) for x in h.split("."))
        rows.append({"head": h, "layer": L, "index": i, "score": scores["heads"][L][i] if scores else None,
                     "edges_in": sum(e["receiver"] == h for e in data_edges) if edge else None,  # no edge circuit
                     "edges_out": sum(e["sender"] == h for e in data_edges) if edge else None,
                     "role": _role(h, composition.get("edges", []), data_edges)})
    config = methods.get("config", {})
    return {
        "model": circuit.get("model"), "task": circuit.get("task"), "config": config,
        "n_layers": graph["n_layers"], "n_heads": graph["heads_per_layer"], "n_nodes": graph.get("n_nodes"),
        "n_edges": graph.get("n_edges"), "splits": circuit.get("splits"),
        "held_out_templates": circuit.get("held_out_templates", []),
        "examples": circuit.get("examples", []), "corrupted_examples": circuit.get("corrupted_examples", []),
        "example_tokens": circuit.get("example_tokens"),
        "heads": heads, "mlps": mlps, "size": head["count"], "mlps_kept": "kept_always" in head,
        "selected_by": head["method"], "val_f": head["val_f"],
        "test": head["test"], "verdict_flips": head.get("verdict_flips"), "head_rows": rows,
        "edge_circuit": {k: edge[k] for k in ("method", "count", "val_f", "test", "verdict_flips") if k in edge}
        if edge else None,
        "edges": {"circuit": data_edges}, "composition": composition,
        "methods": [{k: m.get(k) for k in ("name", "granularity", "ablation", "cpr", "cpr_ci", "cmd", "cmd_ci", "k_star",
                                           "curve", "seconds")} for m in methods.get("methods", [])],
        "robustness": robust.get("robustness", []), "seconds": config.get("seconds"), "node_scores": scores,
    }


def _edges_between(edge_names: list[str], nodes: set[str]) -> list[dict]:
    """The edges (``sender->receiver[:input]``) whose sender and receiver are both in ``nodes``."""
    out = []
    for name in edge_names:
        sender, receiver = name.split("->")
        target, _, kind = receiver.partition(":")
        if sender in nodes and target in nodes:
            out.append({"sender": sender, "receiver": target, "input": kind or None})
    return out


def _node_scores(by_method: dict, n_layers: int, n_heads: int) -> dict | None:
    """One method's node scores as a layer x head table and a per-layer MLP list (exact patching preferred,
    then EAP-IG, then EAP): {method, heads [L][H], mlps [L]}; None when no method scored nodes."""
    name = next((m for m in ("topk-patching", "eap-ig", "eap") if m in by_method), None)
    if name is None:
        return None
    s = by_method[name]
    return {"method": name, "heads": [[s.get(f"{L}.{h}") for h in range(n_heads)] for L in range(n_layers)],
            "mlps": [s.get(f"mlp{L}") for L in range(n_layers)]}


def _role(head: str, composition: list[dict], data_edges: list[dict]) -> str:
    """What a circuit head does inside the circuit, from its strongest composition edges (and edge-circuit edges to
    the logits)."""
    parts = []
    ins = [e for e in composition if e["receiver"] == head]
    outs = sorted((e for e in composition if e["sender"] == head), key=lambda e: -e["z"])
    if ins:
        parts.append(f"{ins[0]['type']} from {ins[0]['sender']}")
    if outs:
        parts.append(f"{outs[0]['type']} into {outs[0]['receiver']}")
    if any(e["sender"] == head and e["receiver"] == "logits" for e in data_edges):
        parts.append("direct to logits")
    return "; ".join(parts)


# --- per-head pages -------------------------------------------------------------------------------

def _head_pages(ctx: _Context, results: dict) -> dict:
    """For every head the report names (circuit, composition tables, attention): its numbers and edges."""
    circuit = results["circuit"]
    if "missing" in circuit:
        return {}
    named = list(circuit["heads"])
    for rows in (results["heads"].get("top_edges") or {}).values():
        for e in rows:
            named += [e["sender"], e["receiver"]]
    named += [h["head"] for h in results["attention"].get("heads", [])]
    weight_edges = _weight_edges(ctx)
    pages = {}
    for h in dict.fromkeys(named):
        if not re.fullmatch(r"\d+\.\d+", h):  # the name becomes a file name
            continue
        L, i = (int(x) for x in h.split("."))
        if L >= circuit["n_layers"] or i >= circuit["n_heads"]:
            continue
        ins = sorted((e for e in weight_edges if e["receiver"] == h), key=lambda e: -(e["z"] or 0))[:10]
        outs = sorted((e for e in weight_edges if e["sender"] == h), key=lambda e: -(e["z"] or 0))[:10]
        scores = circuit.get("node_scores")
        pages[h] = {"head": h, "layer": L, "index": i, "in_circuit": h in circuit["heads"],
                    "score": scores["heads"][L][i] if scores else None,
                    "composition_in": ins, "composition_out": outs,
                    "circuit_edges": [e for e in circuit["edges"]["circuit"] if h in (e["sender"], e["receiver"])],
                    "href": f"heads/{h}.html"}
    return pages


# --- layers ---------------------------------------------------------------------------------------

def _layers(ctx: _Context) -> dict:
    """Every layer analysis in layers/ (by file name), read through its typed result."""
    out = {}
    for f in sorted((ctx.run / "layers").glob("*.json")):
        if f.name == "stage.json":
            continue
        r = read_json(f, what="layer analysis")
        if isinstance(r, dict) and r.get("analysis") in layer_results.RESULTS:
            out[f.stem] = plain_json(layer_results.parse({k: v for k, v in r.items() if k != "files"}).to_json())
    return {"analyses": out} if out else {"missing": "no layer analysis JSON in layers/"}


# results.json's shape: each section is an object (a skipped stage's is {"missing": why}); meta's fields
SECTIONS = ("meta", "training", "dashboards", "matching", "heads", "circuit", "attention", "head_pages", "layers")
META_FIELDS = {"title": str, "run": str, "model": str, "config": dict, "stages": dict, "seeds": dict}


def load_results(path: str | Path) -> dict:
    """A report's results.json, checked to be one: the schema tag, every section an object, meta's fields typed."""
    r = read_json(path, what="report results")
    fix = "pass the results.json a report folder holds, or write it again: saecircuits report RUN_DIR"
    if not isinstance(r, dict) or r.get("schema") != SCHEMA:
        raise SaecircuitsError(f"{path} is not a report results.json (schema {SCHEMA})", fix)
    for section in SECTIONS:
        if not isinstance(r.get(section), dict):
            got = "absent" if section not in r else f"a {type(r[section]).__name__}"
            raise SaecircuitsError(f"{path}: field '{section}' must be an object, it is {got}", fix)
    for name, kind in META_FIELDS.items():
        if r["meta"].get(name) is not None and not isinstance(r["meta"][name], kind):
            raise SaecircuitsError(f"{path}: field 'meta.{name}' must be a {kind.__name__}, it is a "
                                   f"{type(r['meta'][name]).__name__}", fix)
    return r


__all__ = ["SCHEMA", "collect", "load_results"]

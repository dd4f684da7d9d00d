"""The ``saecircuits match`` command: load SAE folders (and models when needed), match, write, print tables.

Modes: ``activations`` (every A x B pair over one stream of text), ``weights`` (folded decoders, no
data), ``chains`` (adjacent weight matchings composed, SAEs in layer order) and ``flow`` (which
earlier feature and sublayer each residual feature came from). The files are written by
``saecircuits.matching.outputs``; this module only adds the console tables.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from saecircuits.core.config import validate
from saecircuits.core.errors import SaecircuitsError
from saecircuits.core.files import check_output_dir, moved_paths, staged_dir
from saecircuits.matching.activations import match_saes, sae_names
from saecircuits.matching.config import MatchConfig
from saecircuits.matching.flow import feature_flow
from saecircuits.matching.outputs import (
    pair_name,
    write_chains,
    write_flow,
    write_match,
    write_weight_match,
    write_weight_summaries,
)
from saecircuits.matching.result import MatchResult
from saecircuits.matching.weights import feature_chains, weight_match
from saecircuits.model import loading as models
from saecircuits.sae import SparseAutoencoder
from saecircuits.sae import format as sae_format

MODES = ("activations", "weights", "chains", "flow")


def run_match_command(sae_a: list[str], sae_b: list[str], out: str, mode: str = "activations", model: str | None = None,
                      model_b: str | None = None, settings: dict | None = None, min_cos: float = 0.5,
                      flow_direction: str = "decoder", console=None, align_to: str | None = None) -> dict:
    """What ``saecircuits match`` does: load SAE folders (and models when needed), match, write, print."""
    console = console or Console()
    if mode not in MODES:
        raise SaecircuitsError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    cfg = validate(MatchConfig, settings or {}, where="match")
    target = check_output_dir(out)  # before loading models
    if flow_direction not in ("decoder", "encoder"):
        raise SaecircuitsError(f"--flow-direction must be decoder or encoder, got {flow_direction!r}")
    saes_a = _load_saes(sae_a)
    saes_b = _load_saes(sae_b) if sae_b else {}
    if mode in ("activations", "weights") and not saes_b:
        raise SaecircuitsError(f"--mode {mode} compares two sides: give at least one --sae-b")
    if set(saes_a) & set(saes_b):
        saes_b = {f"{n}(b)" if n in saes_a else n: s for n, s in saes_b.items()}
    with staged_dir(target) as out_dir:  # the folder holds one whole run, even when interrupted
        if mode == "activations":
            written = _activations(saes_a, saes_b, out_dir, cfg, model, model_b, align_to, console)
        elif mode == "weights":
            written = _weights(saes_a, saes_b, out_dir, cfg, console)
        elif mode == "chains":
            written = _chains({**saes_a, **saes_b}, out_dir, cfg, min_cos, console)
        else:
            written = _flow({**saes_a, **saes_b}, out_dir, model, flow_direction, min_cos, console)
    return moved_paths(written, out_dir, target)


def _load_saes(folders: list[str]) -> dict[str, SparseAutoencoder]:
    return {n: sae_format.load(f) for n, f in zip(sae_names(folders), folders, strict=True)}


def _model_name(saes: dict[str, SparseAutoencoder], given: str | None, side: str) -> str:
    """``given``, else the one model the SAEs' cfg.json name."""
    if given:
        return given
    option = f"--model{'' if side == 'A' else '-b'}"
    # a local model folder is named by its path (model_path); a hub or offline model by model_name
    names = {(s.metadata or {}).get("model_path") or (s.metadata or {}).get("model_name") for s in saes.values()}
    names.discard(None)
    if len(names) != 1:
        raise SaecircuitsError(f"cannot tell the model of the {side} SAEs from their cfg.json ({sorted(names) or 'none named'})",
                               f"pass {option} NAME (or {option} PATH for a local model folder)")
    name = names.pop()
    if Path(name).is_absolute() and not Path(name).is_dir():
        raise SaecircuitsError(f"the {side} SAEs were trained on the model folder {name}, which no longer exists",
                               f"pass {option} PATH with the folder where that model is now")
    return name


def _load(name: str, from_cfg: bool, option: str):
    """``models.load(name)``; when the name came from the SAEs' cfg.json, a failure says how to name the model."""
    try:
        return models.load(name)
    except SaecircuitsError as e:
        if not from_cfg:
            raise
        raise SaecircuitsError(f"the SAEs' cfg.json names model '{name}', which cannot be loaded: {e.message}",
                               f"pass {option} NAME, or {option} PATH if they were trained from a local model folder"
                               ) from None


def _activations(saes_a: dict, saes_b: dict, out_dir: Path, cfg: MatchConfig, model: str | None, model_b: str | None,
                 align_to: str | None, console: Console) -> dict:
    """Activation matching of every A x B pair: one model, or two with the text aligned by characters."""
    name_a = _model_name(saes_a, model, "A")
    name_b = model_b or (name_a if model else _model_name(saes_b, None, "B"))
    spec_a, spec_b = models.offline_model(name_a), models.offline_model(name_b)
    same = (spec_a is not None and spec_a == spec_b) or name_a == name_b
    if align_to and not same:
        raise SaecircuitsError("--align-to is for same-model pairs; with --model-b the text is aligned to that model already",
                               "drop --align-to, or give SAEs of one model on both sides")
    lm_a = _load(name_a, model is None, "--model")
    lm_b = None if same else _load(name_b, model_b is None, "--model-b")
    result = match_saes(saes_a, saes_b, lm_a, lm_b, cfg, align_to=models.load(align_to) if align_to else None)
    written = write_match(result, out_dir)
    console.print(_activation_table(MatchResult.from_json(result), cfg.method))
    return written


def _activation_table(match: MatchResult, method: str) -> Table:
    t = Table(title=f"activation matching ({method}), {match.timing['tokens']:,} tokens")
    for col in ("A", "B", "alive A/B", "pairs", "mean r", "r>0.7", "kept", "SVCCA (p)", "CKA (p)"):
        t.add_column(col, justify="left" if col in ("A", "B") else "right")
    for r in match.results:
        s, dec = r.summary, r.similarity.get("decoder", {})
        t.add_row(r.a, r.b, f"{s['alive_a']}/{s['alive_b']}", str(s["n_pairs"]), f"{s['mean_r']:.3f}",
                  f"{s['share_r_gt_0.7']:.3f}", str(s["n_kept"]), _score(dec, "svcca"), _score(dec, "cka"))
    return t


def _score(stats: dict, measure: str) -> str:
    """'score (p value)' of one similarity measure, or '-' when it was not computed."""
    return f"{stats[measure]['score']:.3f} ({stats[measure]['p_value']:.3g})" if measure in stats else "-"


def _weights(saes_a: dict, saes_b: dict, out_dir: Path, cfg: MatchConfig, console: Console) -> dict:
    """Weight matching of every A x B pair (folded decoders)."""
    rows = []
    for a, sa in saes_a.items():
        for b, sb in saes_b.items():
            res = weight_match(sa, sb, cfg.method)
            write_weight_match(res, out_dir, pair_name(a, b))
            rows.append({"a": a, "b": b, "summary": res["summary"]})
    written = write_weight_summaries(rows, out_dir)
    t = Table(title=f"weight matching ({cfg.method}, folded decoders)")
    for col in ("A", "B", "pairs", "mean cos", "cos>0.7", "cos>0.9"):
        t.add_column(col)
    for r in rows:
        s = r["summary"]
        t.add_row(r["a"], r["b"], str(s["n_pairs"]), f"{s['mean_cos']:.3f}", f"{s['share_cos_gt_0.7']:.3f}", f"{s['share_cos_gt_0.9']:.3f}")
    console.print(t)
    return written


def _chains(suite: dict, out_dir: Path, cfg: MatchConfig, min_cos: float, console: Console) -> dict:
    """Feature chains through the SAEs in the order given."""
    res = feature_chains(list(suite.values()), list(suite), min_cos=min_cos, method=cfg.method)
    written = write_chains(res, out_dir)
    console.print("chain survival (share of features still linked after s steps): "
                  + ", ".join(f"{s}: {v:.3f}" for s, v in enumerate(res["survival"])))
    return written


def _flow(suite: dict, out_dir: Path, model: str | None, flow_direction: str, min_cos: float, console: Console) -> dict:
    """Feature flow over the suite (the model is loaded only when a hook_z SAE needs W_O)."""
    lm = None
    if any(s.cfg.hook.split(":")[0].endswith("attn.hook_z") for s in suite.values()):
        lm = models.load(_model_name(suite, model, "A"))
    res = feature_flow(suite, lm, flow_direction, min_cos)
    written = write_flow(res, out_dir)
    t = Table(title=f"feature flow ({flow_direction} directions, min cos {min_cos})")
    kinds = sorted({k for s in res["origin_shares"].values() for k in s if k != "sources"})
    for col in ["SAE", *kinds]:
        t.add_column(col)
    for name, s in res["origin_shares"].items():
        t.add_row(name, *[f"{s.get(k, 0.0):.3f}" for k in kinds])
    console.print(t)
    return written

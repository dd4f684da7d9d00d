"""SAELens's on-disk format: a folder with ``cfg.json`` and ``sae_weights.safetensors``.

``save`` folds the activation-normalisation scale into the weights (the file works on raw
activations, ``normalize_activations: none``), writes atomically, and records where the SAE
belongs (model, hook, head) in ``metadata`` as SAELens does. ``load`` opens files written here
or by SAELens (standard, topk, jumprelu and their transcoder forms).
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import torch

from saecircuits.activations.site import Site
from saecircuits.core.errors import SaecircuitsError
from saecircuits.core.files import ensure_dir, read_json, staged_dir, write_json
from saecircuits.core.tensors import load_tensors, save_tensors
from saecircuits.sae import ARCHITECTURES, SAEConfig, SparseAutoencoder

WEIGHTS = "sae_weights.safetensors"
CFG = "cfg.json"

# SAELens architecture -> (our architecture, is transcoder, has skip)
_FROM_SAELENS = {
    "standard": ("standard", False, False),
    "topk": ("topk", False, False),
    "jumprelu": ("jumprelu", False, False),
    "transcoder": ("standard", True, False),
    "skip_transcoder": ("standard", True, True),
    "jumprelu_transcoder": ("jumprelu", True, False),
    "jumprelu_skip_transcoder": ("jumprelu", True, True),
}


def fold_scales(tensors: dict[str, torch.Tensor], scale_in: float, scale_out: float) -> dict[str, torch.Tensor]:
    """Weights trained on x·s_in -> y·s_out, rewritten to work on raw x and y.

    pre-activations are unchanged ((x·s_in)·W_enc = x·(s_in·W_enc)), so thresholds stay as they are.
    """
    t = dict(tensors)
    t["W_enc"] = t["W_enc"] * scale_in
    t["W_dec"] = t["W_dec"] / scale_out
    t["b_dec"] = t["b_dec"] / scale_out
    if "W_skip" in t:
        t["W_skip"] = t["W_skip"] * (scale_in / scale_out)
    return t


def save(
    sae: SparseAutoencoder,
    folder: str | Path,
    *,
    model_name: str,
    scale_in: float = 1.0,
    scale_out: float = 1.0,
    context_size: int | None = None,
    dataset: str | None = None,
    prepend_bos: bool = True,
    exclude_special_tokens: list[int] | None = None,
    training_tokens: int | None = None,
    extra_metadata: dict | None = None,
) -> Path:
    """Write ``sae`` in SAELens's format, atomically (a half-written SAE never replaces a good one)."""
    folder = Path(folder)
    ensure_dir(folder.parent)
    site = Site.parse(sae.cfg.hook)
    tensors = fold_scales(sae.saelens_tensors(), scale_in, scale_out)
    cfg = {
        "architecture": sae.saelens_architecture(),
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": not sae.is_transcoder,
        "normalize_activations": "none",
        "reshape_activations": "hook_z" if site.hook.endswith("attn.hook_z") and site.head is None else "none",
        **sae.saelens_cfg_fields(),
        "metadata": {
            "sae_lens_version": _saelens_format_version(),  # without it SAELens reads a pre-6.0 config: no metadata
            "sae_lens_training_version": None,  # not trained by SAELens
            "model_name": model_name,
            "hook_name": site.hook,
            "hook_head_index": site.head,
            "context_size": context_size,
            "prepend_bos": prepend_bos,
            "dataset_path": dataset,
            "exclude_special_tokens": exclude_special_tokens,
            "training_architecture": sae.architecture,
            "trained_with": f"saecircuits {importlib.metadata.version('saecircuits')}",
            "training_tokens": training_tokens,
            "saecircuits_config": sae.cfg.model_dump(mode="json"),
            "activation_scale_folded": {"in": scale_in, "out": scale_out},
            **(extra_metadata or {}),
        },
    }
    if sae.is_transcoder:
        cfg["d_out"] = sae.d_out
        out_site = Site.parse(sae.cfg.hook_out or "")
        cfg["metadata"]["hook_name_out"] = out_site.hook
        cfg["metadata"]["hook_head_index_out"] = out_site.head
    with staged_dir(folder, f".{folder.name}.") as tmp:
        save_tensors(tmp / WEIGHTS, tensors)
        write_json(tmp / CFG, cfg)
    return folder


def check_fits(sae: SparseAutoencoder, model, where: str | Path) -> Site:
    """The hook site ``sae`` (read from ``where``) reads, checked to exist in ``model`` (a HookedTransformer)
    with the SAE's input width: one clear error instead of a shape mismatch deep in a forward pass."""
    from saecircuits.activations.store import site_widths

    site = Site.parse(sae.cfg.hook)
    try:
        width = site_widths(model, [site])[site.key]
    except SaecircuitsError as e:
        raise SaecircuitsError(f"the SAE in {where} reads {sae.cfg.hook}: {e.message}", e.hint) from None
    if width != sae.d_in:
        raise SaecircuitsError(f"the SAE in {where} takes inputs of width {sae.d_in}, but {sae.cfg.hook} of "
                               f"{model.cfg.model_name} has width {width}", "use the model the SAE was trained on")
    return site


def _saelens_format_version() -> str:
    """The SAELens version whose format ``save`` writes: the installed one, else the first of the 6.x format."""
    try:
        return importlib.metadata.version("sae-lens")
    except importlib.metadata.PackageNotFoundError:
        return "6.0.0"


def load(folder: str | Path, device: str = "cpu") -> SparseAutoencoder:
    """An SAE from a SAELens-format folder (written here or by SAELens)."""
    folder = Path(folder)
    cfg = _read_cfg(folder)
    arch = cfg["architecture"]
    ours, transcoder, skip = _FROM_SAELENS[arch]
    meta = cfg.get("metadata") or {}
    try:
        d_in, d_sae = int(cfg["d_in"]), int(cfg["d_sae"])
    except (KeyError, TypeError, ValueError):
        raise SaecircuitsError(f"{folder / CFG} lacks d_in / d_sae") from None
    site, site_out = _sites(cfg, meta, transcoder)
    scfg = SAEConfig(architecture=ours, hook=site, hook_out=site_out, skip=skip, d_sae=d_sae, k=int(cfg.get("k", 32)))
    sae = ARCHITECTURES[ours](scfg, d_in, int(cfg.get("d_out", d_in)))
    tensors = load_tensors(folder / WEIGHTS, what="SAE weights")
    _check_shapes(tensors, sae, arch, folder / WEIGHTS)
    if cfg.get("apply_b_dec_to_input", True) is False and not transcoder:
        raise SaecircuitsError(f"{folder / CFG}: apply_b_dec_to_input false is not supported for SAEs")
    _copy_weights(sae, tensors, rescale_by_decoder_norm=arch == "topk" and cfg.get("rescale_acts_by_decoder_norm", False))
    sae.metadata = meta  # type: ignore[attr-defined]
    sae.eval()
    return sae.to(device)


def _read_cfg(folder: Path) -> dict:
    """``cfg.json`` of an SAE folder, checked: a supported architecture, no normalisation left to apply."""
    if not folder.is_dir():
        raise SaecircuitsError(f"SAE folder {folder} does not exist")
    cfg = read_json(folder / CFG, what="SAE config")
    if not isinstance(cfg, dict):
        raise SaecircuitsError(f"{folder / CFG} is not an SAE config")
    arch = cfg.get("architecture")
    if arch not in _FROM_SAELENS:
        raise SaecircuitsError(
            f"{folder / CFG}: architecture {arch!r} is not supported",
            f"supported: {', '.join(_FROM_SAELENS)}",
        )
    norm = cfg.get("normalize_activations", "none")
    if norm not in ("none", None):
        raise SaecircuitsError(f"{folder / CFG}: normalize_activations {norm!r} is not supported", "fold it into the weights first")
    return cfg


def _sites(cfg: dict, meta: dict, transcoder: bool) -> tuple[str, str | None]:
    """The site specs (``hook`` or ``hook:head``) the SAE reads and, for a transcoder, writes."""
    hook = meta.get("hook_name") or cfg.get("hook_name") or "unknown"
    head = meta.get("hook_head_index", cfg.get("hook_head_index"))
    site = hook if head is None else f"{hook}:{head}"
    site_out = None
    if transcoder:
        out = meta.get("hook_name_out") or cfg.get("hook_name_out") or "unknown_out"
        head_out = meta.get("hook_head_index_out")
        site_out = out if head_out is None else f"{out}:{head_out}"
    return site, site_out


def _check_shapes(tensors: dict[str, torch.Tensor], sae: SparseAutoencoder, arch: str, path: Path) -> None:
    """Every tensor the architecture needs is in the weights file, with the shape cfg.json implies."""
    d_in, d_sae = sae.d_in, sae.d_sae
    expect = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, sae.d_out), "b_enc": (d_sae,), "b_dec": (sae.d_out,)}
    if sae.cfg.skip:
        expect["W_skip"] = (sae.d_out, d_in)
    if sae.cfg.architecture == "jumprelu":
        expect["threshold"] = (d_sae,)
    for name, shape in expect.items():
        if name not in tensors:
            raise SaecircuitsError(f"{path} has no tensor {name} (a {arch} SAE needs {', '.join(expect)})")
        if tuple(tensors[name].shape) != shape:
            raise SaecircuitsError(f"{path}: {name} has shape {tuple(tensors[name].shape)}, cfg.json says {shape}")


@torch.no_grad()
def _copy_weights(sae: SparseAutoencoder, tensors: dict[str, torch.Tensor], rescale_by_decoder_norm: bool) -> None:
    """SAELens tensors into ``sae``'s parameters (a JumpReLU threshold becomes its log)."""
    W_dec = tensors["W_dec"].float()
    if rescale_by_decoder_norm:
        # top-k of pre·|W_dec| then /|W_dec| equals top-k with the norms folded into the encoder
        n = W_dec.norm(dim=1)
        tensors["W_enc"] = tensors["W_enc"] * n
        tensors["b_enc"] = tensors["b_enc"] * n
        W_dec = W_dec / n[:, None]
    sae.W_enc.copy_(tensors["W_enc"])
    sae.b_enc.copy_(tensors["b_enc"])
    sae.W_dec.copy_(W_dec)
    sae.b_dec.copy_(tensors["b_dec"])
    if sae.cfg.skip:
        sae.W_skip.copy_(tensors["W_skip"])
    if sae.cfg.architecture == "jumprelu":
        sae.log_threshold.copy_(tensors["threshold"].float().clamp_min(1e-30).log())

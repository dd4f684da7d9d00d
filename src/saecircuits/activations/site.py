"""Hook sites: where in a model an activation stream is read, written ``hook`` or ``hook:head``.

Every stage names its sites this way (the store and cache record them, SAEs read and write them,
dashboards, matching and the layer analyses run the model at them).
"""

from __future__ import annotations

from dataclasses import dataclass

from transformer_lens import HookedTransformer

from saecircuits.core.errors import SaecircuitsError
from saecircuits.model import hooks as hooklib


@dataclass(frozen=True)
class Site:
    """One activation stream: a hook point, or one head of a hook with a head dimension.

    Written ``blocks.3.attn.hook_z`` (all heads concatenated, SAELens's hook_z layout) or
    ``blocks.3.attn.hook_z:5`` (head 5 alone).
    """

    hook: str
    head: int | None = None

    @property
    def key(self) -> str:
        return self.hook if self.head is None else f"{self.hook}:{self.head}"

    @property
    def layer(self) -> int | None:
        return hooklib.layer_of(self.hook)

    @classmethod
    def parse(cls, spec: str) -> Site:
        hook, _, head = spec.partition(":")
        if head and not head.isdigit():
            raise SaecircuitsError(f"site '{spec}': the part after ':' must be a head index, e.g. {hook}:0")
        return cls(hook, int(head) if head else None)


def expand_sites(model: HookedTransformer, specs: list[str]) -> list[Site]:
    """Parse site specs; ``hook:*`` becomes one site per head. Validates hooks and head indices."""
    out: list[Site] = []
    for spec in specs:
        hook, _, head = spec.partition(":")
        hooklib.validate(model, hook)
        if head and not hooklib.is_head_hook(hook):
            raise SaecircuitsError(f"site '{spec}': {hook} has no head dimension; heads split only {', '.join(hooklib.HEAD_HOOKS)}")
        n_heads = _n_heads(model, hook)
        if head == "*":
            out.extend(Site(hook, h) for h in range(n_heads))
            continue
        site = Site.parse(spec)
        if site.head is not None and not 0 <= site.head < n_heads:
            raise SaecircuitsError(f"site '{spec}': head {site.head} does not exist; {hook} has heads 0 to {n_heads - 1}")
        out.append(site)
    if len({s.key for s in out}) != len(out):
        raise SaecircuitsError("the same hook site is listed twice")
    return out


def _n_heads(model: HookedTransformer, hook: str) -> int:
    kv = model.cfg.n_key_value_heads or model.cfg.n_heads
    return kv if hook.endswith(("attn.hook_k", "attn.hook_v")) else model.cfg.n_heads

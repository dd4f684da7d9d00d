"""The computation graph circuits are cut from: nodes (heads and MLPs) and MIB's edges between them.

Senders write to the residual stream: ``input`` (the embeddings), every head ``L.H`` and every MLP
``mlpL``. Receivers read from it: every query head's query input ``L.H:q``, every key/value head's
key and value inputs ``L.G:k`` / ``L.G:v``, every MLP's input ``mlpL`` and the ``logits``. An edge
runs from a sender to each receiver that comes after it (a head's output reaches the MLP of its own
layer, unless attention and MLP run in parallel), as in MIB (Mueller et al. 2025).

Grouped-query attention: a key/value head is one computation shared by a group of query heads, so
its key and value inputs are one receiver each (``G`` indexes the key/value heads; query head ``H``
reads group ``H // (n_heads / n_kv_heads)``). Cutting an edge into ``L.G:k`` changes the keys of
every query head of the group. This is the model's own structure; tools that ungroup the heads
(auto-circuit) count ``n_heads / n_kv_heads`` times as many key and value edges.

Nodes are the heads and MLPs (the embeddings are always kept); a node circuit keeps a node's every
outgoing edge or none.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformer_lens import HookedTransformer

from saecircuits.model.hooks import head_name


@dataclass(frozen=True)
class ComputationGraph:
    """Senders, receivers and which pairs are edges, for one model shape.

    ``valid``: [n_senders, n_receivers] bool, True where the sender comes before the receiver.
    ``sender_layer``: each sender's block (-1 for ``input``). ``layer_receivers[L]``: the receivers of
    block L as (first, stop) index ranges: queries ``n_heads``, keys and values ``n_kv`` each, then the
    MLP. ``node_of_sender``: each sender's node index (-1 for ``input``).
    """

    n_layers: int
    n_heads: int
    n_kv: int
    has_mlp: bool
    parallel: bool
    senders: tuple[str, ...]
    receivers: tuple[str, ...]
    valid: torch.Tensor
    sender_layer: tuple[int, ...]

    @classmethod
    def of(cls, model: HookedTransformer) -> ComputationGraph:
        c = model.cfg
        n_kv = c.n_key_value_heads or c.n_heads
        has_mlp = not c.attn_only
        parallel = bool(c.parallel_attn_mlp)
        senders, s_depth, s_layer = ["input"], [-1.0], [-1]
        receivers, r_depth = [], []
        mlp_depth = 0.0 if parallel else 0.5  # a parallel MLP reads the stream the heads read
        for L in range(c.n_layers):
            receivers += [f"{head_name(L, h)}:q" for h in range(c.n_heads)]
            receivers += [f"{head_name(L, g)}:{x}" for x in "kv" for g in range(n_kv)]
            r_depth += [float(L)] * (c.n_heads + 2 * n_kv)
            senders += [head_name(L, h) for h in range(c.n_heads)]
            s_depth += [float(L)] * c.n_heads
            s_layer += [L] * c.n_heads
            if has_mlp:
                receivers.append(f"mlp{L}")
                r_depth.append(L + mlp_depth)
                senders.append(f"mlp{L}")
                s_depth.append(L + mlp_depth)
                s_layer.append(L)
        receivers.append("logits")
        r_depth.append(float(c.n_layers))
        valid = torch.tensor(s_depth)[:, None] < torch.tensor(r_depth)[None, :]
        return cls(c.n_layers, c.n_heads, n_kv, has_mlp, parallel, tuple(senders), tuple(receivers), valid,
                   tuple(s_layer))

    # --- sizes and index ranges -------------------------------------------------------------

    @property
    def n_edges(self) -> int:
        return int(self.valid.sum())

    @property
    def n_nodes(self) -> int:
        return len(self.senders) - 1

    @property
    def nodes(self) -> tuple[str, ...]:
        """Heads and MLPs, in sender order (the senders without ``input``)."""
        return self.senders[1:]

    @property
    def per_layer_senders(self) -> int:
        return self.n_heads + int(self.has_mlp)

    def head_senders(self, layer: int) -> slice:
        first = 1 + layer * self.per_layer_senders
        return slice(first, first + self.n_heads)

    def mlp_sender(self, layer: int) -> int:
        return 1 + layer * self.per_layer_senders + self.n_heads

    def receiver_block(self, layer: int) -> slice:
        """Receivers of block ``layer``: q (n_heads), k (n_kv), v (n_kv), then the MLP."""
        width = self.n_heads + 2 * self.n_kv + int(self.has_mlp)
        return slice(layer * width, (layer + 1) * width)

    def senders_before(self, layer: int, mlp: bool = False) -> int:
        """How many senders an attention receiver of ``layer`` (``mlp``: its MLP) reads: a prefix of the senders."""
        n = 1 + layer * self.per_layer_senders
        return n + (self.n_heads if mlp and not self.parallel else 0)

    # --- masks --------------------------------------------------------------------------------

    def edge_mask_of_nodes(self, nodes: torch.Tensor) -> torch.Tensor:
        """Edge masks [..., S, R] of node masks [..., n_nodes] (bool or float): an edge is kept when its
        sender is (``input`` always is)."""
        kept = torch.cat([torch.ones_like(nodes[..., :1]), nodes], -1)[..., :, None]
        return kept & self.valid if nodes.dtype == torch.bool else kept * self.valid

    def edges_flat(self, mask: torch.Tensor) -> torch.Tensor:
        """The valid entries of [..., S, R] as [..., n_edges] (row-major: by sender, then receiver)."""
        return mask[..., self.valid]

    def edges_unflat(self, flat: torch.Tensor, fill: float | bool = False) -> torch.Tensor:
        """[..., n_edges] back to [..., S, R], ``fill`` where there is no edge."""
        out = torch.full((*flat.shape[:-1], *self.valid.shape), fill, dtype=flat.dtype)
        out[..., self.valid] = flat
        return out

    def edge_names(self) -> list[str]:
        """``sender->receiver`` of every edge, in ``edges_flat`` order."""
        s, r = self.valid.nonzero(as_tuple=True)
        return [f"{self.senders[i]}->{self.receivers[j]}" for i, j in zip(s.tolist(), r.tolist())]

    def head_nodes(self) -> torch.Tensor:
        """[n_nodes] bool: which nodes are heads (the rest are MLPs)."""
        return torch.tensor([not n.startswith("mlp") for n in self.nodes])

    # --- granularities: what a circuit's units are -----------------------------------------------

    def n_units(self, granularity: str) -> int:
        """Units of a circuit: ``edges``; ``nodes`` (heads and MLPs); ``heads`` (every MLP kept)."""
        return {"edges": self.n_edges, "nodes": self.n_nodes, "heads": self.n_layers * self.n_heads}[granularity]

    def unit_names(self, granularity: str) -> list[str]:
        if granularity == "edges":
            return self.edge_names()
        return [n for n in self.nodes if granularity == "nodes" or not n.startswith("mlp")]

    def node_masks(self, granularity: str, masks: torch.Tensor) -> torch.Tensor:
        """Node masks [..., n_nodes] of ``nodes`` or ``heads`` unit masks (bool or float; heads: MLPs kept, and
        differentiable in the head entries)."""
        if granularity == "nodes":
            return masks
        out = torch.ones((*masks.shape[:-1], self.n_nodes), dtype=masks.dtype)
        out[..., self.head_nodes()] = masks
        return out

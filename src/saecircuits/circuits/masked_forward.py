"""The model run with a circuit: every edge (or node) outside it reads an ablated sender instead.

``MaskedForward`` runs a ``HookedTransformer`` block by block with TransformerLens's own norms,
attention (rotary, grouped-query, local windows, q/k norms) and MLP modules, keeping each sender's
output (see ``computation_graph``) separately. A receiver's input is the residual stream with every
cut edge's sender output swapped for that sender's output on the ablated run:

    input_r = sum_s out_s  -  sum_s (1 - m_sr) (out_s - abl_s)

``m`` is an edge mask (1 = kept; values in between for learned masks; ``edges``) or a node mask
(``nodes``, the same for every receiver, and then one residual stream suffices). ``abl`` holds each
sender's output on the ablated run (the counterfactual prompt, a mean, zeros, ...; see
``ablations``). With every edge kept this is the model's own forward pass; with none kept it is the
ablated run. ``delta`` replaces ``out_s - abl_s`` by fixed differences (for attribution methods, whose
gradient with respect to ``m`` at m = 1 is then delta . d metric / d input_r).

A head's output is z_h W_O_h + b_O / n_heads. Under a norm after the attention output (Gemma's
post-norms) it is scaled by that norm's weight over the run's own norm scale, so the heads' outputs
still sum to the block's attention output exactly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from transformer_lens import HookedTransformer
from transformer_lens.HookedTransformer import POST_NORM_ARCHITECTURES

from saecircuits.circuits.computation_graph import ComputationGraph
from saecircuits.core.errors import SaecircuitsError
from saecircuits.model.unembed import unembed


def unsupported(model: HookedTransformer) -> str | None:
    """Why a circuit cannot be cut from this model (None: it can)."""
    c = model.cfg
    if c.original_architecture in POST_NORM_ARCHITECTURES:
        return f"post-norm blocks ({c.original_architecture})"
    if c.positional_embedding_type == "shortformer":
        return "shortformer positions"
    if c.use_normalization_before_and_after and type(model.blocks[0].ln1_post).__name__ not in ("RMSNorm",):
        return f"a {type(model.blocks[0].ln1_post).__name__} after the attention output"
    return None


@contextlib.contextmanager
def split_inputs(model: HookedTransformer) -> Iterator[None]:
    """Attention takes one input per head (grouped key/value heads stay grouped)."""
    c = model.cfg
    saved = (c.use_split_qkv_input, c.ungroup_grouped_query_attention)
    c.use_split_qkv_input, c.ungroup_grouped_query_attention = True, False
    try:
        yield
    finally:
        c.use_split_qkv_input, c.ungroup_grouped_query_attention = saved


class _Deltas:
    """Each sender's output minus its ablated output, ``D`` [M, S, b * pos * d_model] (mask-major, so a receiver's
    sum over senders is one batched matmul on a view), and under autograd the gradient the receivers send back to
    them, ``grad`` (same shape). One buffer a run: no copies per receiver."""

    def __init__(self) -> None:
        self.D: torch.Tensor | None = None
        self.grad: torch.Tensor | None = None


class _Slot(torch.autograd.Function):
    """Writes senders' out - abl into the buffer; its backward hands them the gradient the receivers collected.

    Returns an empty token: every later receiver takes it as an input, so autograd runs their backward first."""

    @staticmethod
    def forward(ctx, out: torch.Tensor, abl: torch.Tensor, deltas: _Deltas, first: int) -> torch.Tensor:
        n, M = out.shape[0], deltas.D.shape[0]
        d = out.view(n, M, -1, *out.shape[2:]) - abl[:, None]  # [n, M, b, p, d_model]
        deltas.D[:, first: first + n] = d.transpose(0, 1).flatten(2)
        ctx.deltas, ctx.first, ctx.shape = deltas, first, out.shape
        return out.new_zeros(0)

    @staticmethod
    def backward(ctx, _token_grad: torch.Tensor):
        grad = ctx.deltas.grad
        n = ctx.shape[0]
        if grad is None:
            return None, None, None, None
        g = grad[:, ctx.first: ctx.first + n].transpose(0, 1)  # [n, M, b * p * d_model]
        return g.reshape(ctx.shape), None, None, None


class _Receive(torch.autograd.Function):
    """corr[m, r] = sum_s w[m, s, r] D[s, m] over the first ``n`` senders: [M, R, b, pos, d_model]."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, deltas: _Deltas, n: int, *tokens: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(w)
        ctx.deltas, ctx.n = deltas, n
        return torch.bmm(w.transpose(1, 2), deltas.D[:, :n])  # [M, R, b * p * d_model]

    @staticmethod
    def backward(ctx, grad_corr: torch.Tensor):
        (w,) = ctx.saved_tensors
        deltas, n = ctx.deltas, ctx.n
        D = deltas.D[:, :n]
        grad_w = torch.bmm(D, grad_corr.transpose(1, 2)) if ctx.needs_input_grad[0] else None  # [M, n, R]
        if any(ctx.needs_input_grad[3:]):
            if deltas.grad is None:
                deltas.grad = torch.zeros_like(deltas.D)
            deltas.grad[:, :n].baddbmm_(w, grad_corr)
        return (grad_w, None, None, *([None] * (len(ctx.needs_input_grad) - 3)))


class _Run:
    """One masked run's state: its masks, the ablated outputs, the sender-delta buffer, the last head outputs."""

    def __init__(self, g: ComputationGraph, shape: torch.Size, ablated: torch.Tensor | None,
                 edges: torch.Tensor | None, nodes: torch.Tensor | None, delta: torch.Tensor | None, record: list | None):
        masks = edges if edges is not None else nodes
        self.g, self.M, (self.b, self.p) = g, 1 if masks is None else masks.shape[0], shape
        self.ablated, self.delta, self.record = ablated, delta, record
        self.edges = None if edges is None else edges.to(torch.get_default_dtype())
        self.cut = None if edges is None else 1 - self.edges  # [M, S, R]
        self.nodes = None if nodes is None else torch.cat([torch.ones_like(nodes[:, :1]), nodes], 1).to(
            torch.get_default_dtype())  # with the input, always kept
        self.z: list[torch.Tensor] = []
        # out - abl of every sender (edge masks), written once each; receivers read prefixes of it
        self.deltas = _Deltas()
        self.tokens: list[torch.Tensor] = []  # what ties each receiver's backward before its senders' (autograd)
        if delta is not None:
            M, b, p = self.M, self.b, self.p
            self.deltas.D = delta.flatten(1)[None].expand(M, delta.shape[0], b * p * delta.shape[-1]) \
                if delta.shape[1] == b else delta.expand(-1, b, -1, -1).flatten(1)[None].expand(M, -1, -1)

    def keep_z(self, z: torch.Tensor, hook) -> torch.Tensor:
        self.z.append(z)
        return z

    def emit(self, first: int, out: torch.Tensor) -> torch.Tensor:
        """Take senders first.. (``out`` [n, M*b, p, d]) into the stream: node-masked, recorded, their deltas kept."""
        n, M, b, p = out.shape[0], self.M, self.b, self.p
        if self.record is not None:
            self.record.extend(out.detach().unbind(0))
        if self.nodes is not None:
            keep = self.nodes[:, first: first + n].T[:, :, None, None, None]  # [n, M, 1, 1, 1]
            abl = self.ablated[first: first + n, None]
            out = (keep * out.view(n, M, b, p, -1) + (1 - keep) * abl).reshape(n, M * b, p, -1)
        elif self.edges is not None and self.delta is None:
            if self.deltas.D is None:
                self.deltas.D = out.new_empty(M, len(self.g.senders), b * p * out.shape[-1])
            token = _Slot.apply(out, self.ablated[first: first + n], self.deltas, first)
            if token.requires_grad:
                self.tokens.append(token)
        return out.sum(0)

    def receive(self, stream: torch.Tensor, n_senders: int, recv: slice) -> torch.Tensor | None:
        """The inputs of receivers ``recv``: [M, R, b, p, d] (None: no edge into them is cut)."""
        if self.cut is None:
            return None
        w = self.cut[:, :n_senders, recv]
        if not w.requires_grad and not bool(w.any()):
            return None
        M, b, p = self.M, self.b, self.p
        corr = _Receive.apply(w, self.deltas, n_senders, *self.tokens).view(M, -1, b, p, stream.shape[-1])
        return stream.view(M, 1, b, p, -1) - corr


class MaskedForward:
    """Runs of one model with edge or node masks. Every tensor of senders is [S, ...] in graph order."""

    def __init__(self, model: HookedTransformer):
        why = unsupported(model)
        if why is not None:
            raise SaecircuitsError(f"circuits cannot be cut from {model.cfg.model_name}: it has {why}")
        self.model, self.graph = model, ComputationGraph.of(model)
        c = model.cfg
        self.post_norm = bool(c.use_normalization_before_and_after)
        self.W_O = torch.stack([b.attn.W_O for b in model.blocks]).detach()  # [L, H, d_head, d_model]
        self.b_O = torch.stack([b.attn.b_O for b in model.blocks]).detach() / c.n_heads  # [L, d_model], a head's share
        # token positions run through every block (a run from block L counts its share), for the speed floor:
        # plain or node-masked, edge-masked, and those that also ran backward
        self.work = {"tokens": 0, "edge_tokens": 0, "backward_tokens": 0}

    @torch.no_grad()
    def sender_outputs(self, tokens: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """Every sender's output on an unmodified run: [S, n, pos, d_model]."""
        outs = []
        for i in range(0, len(tokens), batch_size):
            kept: list[torch.Tensor] = []
            self.run(tokens[i: i + batch_size], positions=(-1,), record=kept)
            outs.append(torch.stack(kept))
        return torch.cat(outs, 1)

    def run(self, tokens: torch.Tensor, positions: Sequence[int], ablated: torch.Tensor | None = None,
            edges: torch.Tensor | None = None, nodes: torch.Tensor | None = None,
            delta: torch.Tensor | None = None, record: list | None = None, embeddings: torch.Tensor | None = None,
            start: tuple[int, torch.Tensor] | None = None, streams: list | None = None) -> torch.Tensor:
        """Logits at ``positions`` with a mask: [M, b, len(positions), vocab].

        ``tokens`` [b, pos]. ``ablated``: [S, b or 1, pos, d_model] sender outputs of the ablated run.
        ``edges`` [M, S, R] or ``nodes`` [M, n_nodes] (bool or float, 1 = kept); neither: the model
        itself. ``delta`` [S, b or 1, pos, d_model]: fixed differences in place of out - abl (edges only).
        ``record``: a list that receives each sender's output (M = 1). ``embeddings`` [b, pos, d_model]:
        the stream entering block 0, in place of the tokens' own (for interpolated inputs).
        ``start`` (layer, resid [b, pos, d_model]): begin at that block from ``resid``, the stream this run has
        entering it: that of any run whose node mask agrees with this one before the block (no edge masks).
        ``streams``: a list that receives the stream entering each block run ([M * b, pos, d_model]).
        """
        g, model = self.graph, self.model
        if edges is not None and nodes is not None:
            raise SaecircuitsError("give edge masks or node masks, not both")
        if (edges is not None or nodes is not None) and ablated is None and delta is None:
            raise SaecircuitsError("a masked run needs the ablated run's sender outputs")
        if start is not None and edges is not None:
            raise SaecircuitsError("a run can start past block 0 only with node masks")
        run = _Run(g, tokens.shape, ablated, edges, nodes, delta, record)
        M, b, p = run.M, run.b, run.p
        depth = 1 - (start[0] / g.n_layers if start is not None else 0)  # share of the blocks this run covers
        self.work["edge_tokens" if edges is not None else "tokens"] += M * b * p * depth
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (edges, nodes, embeddings)):
            self.work["backward_tokens"] += M * b * p
        with contextlib.ExitStack() as stack:
            if edges is not None:
                stack.enter_context(split_inputs(model))
            stack.enter_context(model.hooks(fwd_hooks=[(f"blocks.{L}.attn.hook_z", run.keep_z) for L in range(g.n_layers)]))
            if start is not None:
                first, stream = start[0], start[1].repeat(M, 1, 1)
            else:
                x0 = model(tokens, stop_at_layer=0) if embeddings is None else embeddings  # [b, p, d]
                first, stream = 0, run.emit(0, x0[None].repeat(1, M, 1, 1))
            for L in range(first, g.n_layers):
                if streams is not None:
                    streams.append(stream.detach())
                stream = self._block(L, stream, run)
            final = stream.view(M, b, p, -1)[:, :, list(positions)]
            ins = run.receive(stream, len(g.senders), slice(len(g.receivers) - 1, len(g.receivers)))
            if ins is not None:
                final = ins[:, 0][:, :, list(positions)]
        logits = unembed(model, final.reshape(M * b, len(positions), -1))
        return logits.view(M, b, len(positions), -1)

    def _block(self, L: int, stream: torch.Tensor, run: _Run) -> torch.Tensor:
        """One block: attention from its q/k/v receivers, the heads emitted, then the MLP."""
        g, blk = self.graph, self.model.blocks[L]
        M, b, p = run.M, run.b, run.p
        emit, receive = run.emit, run.receive
        H, K = g.n_heads, g.n_kv
        rb = g.receiver_block(L)
        ins = receive(stream, g.senders_before(L), slice(rb.start, rb.start + H + 2 * K))
        if ins is None and not self.model.cfg.use_split_qkv_input:
            normed = blk.ln1(stream)
            blk.attn(query_input=normed, key_input=normed, value_input=normed)
        else:
            if ins is None:  # edge masks that cut nothing here: every head reads the stream
                ins = stream.view(M, 1, b, p, -1).expand(M, H + 2 * K, b, p, stream.shape[-1])
            per_head = ins.permute(0, 2, 3, 1, 4).reshape(M * b, p, H + 2 * K, -1)  # [M*b, p, R, d]
            q_in, k_in, v_in = per_head[:, :, :H], per_head[:, :, H: H + K], per_head[:, :, H + K:]
            blk.attn(query_input=blk.ln1(q_in), key_input=blk.ln1(k_in), value_input=blk.ln1(v_in))
        z = run.z.pop()  # [M*b, p, H, d_head]
        heads = torch.einsum("bphe,hed->hbpd", z, self.W_O[L]) + self.b_O[L]  # [H, M*b, p, d]
        if self.post_norm:  # the norm after attention, with this run's scale
            total = heads.sum(0)
            scale = (total.pow(2).mean(-1, keepdim=True) + blk.ln1_post.eps).sqrt()
            heads = heads / scale * blk.ln1_post.w
        before = stream
        stream = stream + emit(g.head_senders(L).start, heads)
        if not g.has_mlp:
            return stream
        mlp_stream = before if g.parallel else stream
        ins = receive(mlp_stream, g.senders_before(L, mlp=True), slice(rb.stop - 1, rb.stop))
        mlp_in = mlp_stream if ins is None else ins[:, 0].reshape(M * b, p, -1)
        out = blk.apply_mlp(blk.ln2(mlp_in))
        return stream + emit(g.mlp_sender(L), out[None])

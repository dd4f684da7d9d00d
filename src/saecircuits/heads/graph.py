"""Head-level weight graph: Q-, K- and V-composition between attention heads, read from the weights.

For a sender head s in an earlier layer than a receiver head r (Elhage et al., "A Mathematical
Framework for Transformer Circuits"), with TransformerLens's row-vector convention
(``OV = W_V W_O``, ``QK = W_Q W_K^T``, both [d_model, d_model]):

- Q-composition: ``||OV_s QK_r||_F   / (||OV_s||_F ||QK_r||_F)``  (s writes into r's queries)
- K-composition: ``||OV_s QK_r^T||_F / (||OV_s||_F ||QK_r||_F)``  (s writes into r's keys)
- V-composition: ``||OV_s OV_r||_F   / (||OV_s||_F ||OV_r||_F)``  (s writes into r's values)

Channels ("Talking Heads", Merullo et al.): the SVD ``OV_s = sum_i u_i s_i v_i^T`` splits the sender
into rank-one channels (reads ``u_i``, writes ``v_i``). Because the ``u_i`` are orthonormal,
``||OV_s M||_F^2 = sum_i s_i^2 ||v_i^T M||_F^2`` exactly: each channel's share of an edge is its
term of that sum, and the shares of an edge add up to 1.

Null model: the same score with the sender replaced by a random matrix of the same spectrum
(Haar-random orthonormal write directions, the sender's singular values), over several draws; each
edge gets ``z = (score - null mean) / null std``. The draws are shared by all senders (each edge's
null is still exactly that distribution), so the whole null costs a few matrix products.

Weights are the model's as loaded: ``saecircuits.model.loading.load`` folds the norms (``fold_ln``: the
RMSNorm/LayerNorm weights before attention are folded into ``W_Q``, ``W_K``, ``W_V``), so the scores
use the folded weights. Per-head query/key norms (Gemma-3's ``q_norm``/``k_norm``) are folded here
as their per-coordinate scales. Rotary position rotations and biases are left out (as in Elhage
et al.). Grouped-query attention: key/value heads are shared by groups of query heads; every score is
per query head, and each node records its key/value group.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import torch
from transformer_lens import HookedTransformer

from saecircuits.core.errors import SaecircuitsError
from saecircuits.core.files import check_output_dir, ensure_dir, staged_dir, write_json, write_text
from saecircuits.core.tensors import save_tensors
from saecircuits.heads.config import HeadGraphConfig
from saecircuits.model.hooks import head_name
from saecircuits.model.loading import load

KINDS = ("Q", "K", "V")
CHUNK_BYTES = 256 * 2**20  # bound on the per-edge channel intermediates
GRAM_BYTES = 1024 * 2**20  # bound on the senders' Gram matrices held at once (receivers' chunks: 1/4 of it)


@dataclass
class HeadWeights:
    """Per-head weights, query/key norms folded in. L layers, H query heads, G key/value heads."""

    W_Q: torch.Tensor  # [L, H, d_model, d_head]
    W_K: torch.Tensor  # [L, G, d_model, d_head]
    W_V: torch.Tensor  # [L, G, d_model, d_head]
    W_O: torch.Tensor  # [L, H, d_head, d_model]

    @property
    def group(self) -> int:
        """Query heads per key/value head."""
        return self.W_Q.shape[1] // self.W_K.shape[1]

    def kv_index(self) -> torch.Tensor:
        """[H] the key/value head each query head uses (TransformerLens repeats them with repeat_interleave)."""
        return torch.arange(self.W_Q.shape[1]) // self.group


def head_weights(model: HookedTransformer) -> HeadWeights:
    """Stack the attention weights of every layer (the key/value heads once each, not repeated)."""
    cfg = model.cfg
    wq, wk, wv, wo = [], [], [], []
    for block in model.blocks:
        attn = block.attn
        q, o = attn.W_Q.detach(), attn.W_O.detach()
        k = (attn._W_K if hasattr(attn, "_W_K") else attn.W_K).detach()
        v = (attn._W_V if hasattr(attn, "_W_V") else attn.W_V).detach()
        if getattr(cfg, "use_qk_norm", False) and getattr(attn, "q_norm", None) is not None:
            # RMSNorm on q and k: the division is a per-vector scalar (no effect on these normalised
            # scores); the learned per-coordinate weights scale the query/key coordinates
            q = q * attn.q_norm.w.detach().reshape(-1, q.shape[-1])[:, None, :]
            k = k * attn.k_norm.w.detach().reshape(-1, k.shape[-1])[:, None, :]
        wq.append(q), wk.append(k), wv.append(v), wo.append(o)
    w = HeadWeights(torch.stack(wq).float(), torch.stack(wk).float(), torch.stack(wv).float(), torch.stack(wo).float())
    if w.W_Q.shape[1] % w.W_K.shape[1]:
        raise SaecircuitsError(f"{w.W_Q.shape[1]} query heads cannot share {w.W_K.shape[1]} key/value heads evenly")
    return w


@contextlib.contextmanager
def one_thread():
    """Run batched small decompositions (QR, SVD) on one thread: torch's multi-threaded batched LAPACK
    is 5-20x slower on them (measured on 2 busy cores); matrix products keep every thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _qr(w: torch.Tensor, mode: str = "r") -> tuple[torch.Tensor, torch.Tensor]:
    """``w = QR`` for [..., n, k] matrices, so ``||x w^T|| = ||x R^T||`` for any row vector x."""
    with one_thread():
        return torch.linalg.qr(w, mode=mode)


def receiver_reads(w: HeadWeights, r_out: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per receiver head and kind, a [d_model, rank] matrix ``A`` with ``||y^T M_r||_F = ||y^T A||`` for
    every residual direction y, where ``M_r`` is ``QK_r`` (Q), ``QK_r^T`` (K) or ``OV_r`` (V):
    ``A_Q = W_Q R_K^T``, ``A_K = W_K R_Q^T``, ``A_V = W_V R_O^T`` (R from QR of ``W_K``, ``W_Q``, ``W_O^T``).

    Returns {kind: [L, H, d_model, rank]}; ``||A||_F`` is ``||QK_r||_F`` or ``||OV_r||_F``.
    ``r_out``: R of ``W_O^T`` if already computed.
    """
    kv = w.kv_index()
    r_k = _qr(w.W_K).R[:, kv]  # once per key/value head, then per query head
    r_q = _qr(w.W_Q).R
    r_o = _qr(w.W_O.transpose(-1, -2)).R if r_out is None else r_out
    return {
        "Q": w.W_Q @ r_k.transpose(-1, -2),  # y W_Q W_K^T
        "K": w.W_K[:, kv] @ r_q.transpose(-1, -2),  # y W_K W_Q^T
        "V": w.W_V[:, kv] @ r_o.transpose(-1, -2),  # y W_V W_O
    }


def sender_channels(w: HeadWeights) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD of every head's OV circuit: ``OV = W_V W_O = U diag(S) V^T`` (TransformerLens's ``model.OV``).

    With ``W_V = Q_v R_v`` and ``W_O^T = Q_o R_o``: ``OV = Q_v (R_v R_o^T) Q_o^T``, so one small
    d_head x d_head decomposition per head gives it (what ``FactoredMatrix.svd`` computes, without its
    two large SVDs; about 10x faster here).
    Returns S [L, H, r] (descending), V [L, H, d_model, r] (write directions, orthonormal columns),
    and R of ``W_O^T`` (reused by ``receiver_reads``); r = min(d_head, d_model).
    """
    r_v = _qr(w.W_V).R[:, w.kv_index()]
    q_o, r_o = _qr(w.W_O.transpose(-1, -2), mode="reduced")
    middle = r_v @ r_o.transpose(-1, -2)
    with one_thread():  # eigh of M^T M = V S^2 V^T: half the time of an SVD of M
        s2, vm = torch.linalg.eigh(middle.transpose(-1, -2) @ middle)
    S, vm = s2.flip(-1).clamp(min=0).sqrt(), vm.flip(-1)
    return S, q_o @ vm, r_o


@dataclass
class HeadCircuits:
    """What the scores need of every head, heads flattened layer-major (index ``layer * H + head``)."""

    layer: torch.Tensor  # [N] int64
    head: torch.Tensor  # [N] int64
    kv_group: torch.Tensor  # [N] int64: the key/value head a query head uses (within its layer)
    S: torch.Tensor  # [N, r] OV singular values, descending
    V: torch.Tensor  # [N, d_model, r] OV write directions (orthonormal columns)
    reads: dict[str, torch.Tensor]  # kind -> [N, d_model, rank] (see receiver_reads)

    @classmethod
    def from_model(cls, model: HookedTransformer) -> HeadCircuits:
        w = head_weights(model)
        L, H = w.W_Q.shape[:2]
        S, V, r_o = sender_channels(w)
        return cls(layer=torch.arange(L).repeat_interleave(H), head=torch.arange(H).repeat(L),
                   kv_group=w.kv_index().repeat(L), S=S.flatten(0, 1), V=V.flatten(0, 1),
                   reads={kind: a.flatten(0, 1) for kind, a in receiver_reads(w, r_o).items()})

    def names(self) -> list[str]:
        return [head_name(a, b) for a, b in zip(self.layer.tolist(), self.head.tolist())]


def _gram(x: torch.Tensor) -> torch.Tensor:
    """[n, d, k] -> [n, d*d]: the flattened ``x x^T`` of each matrix."""
    return (x @ x.transpose(-1, -2)).flatten(1)


def causal_gram_products(write: torch.Tensor, reads: dict[str, torch.Tensor], layer: torch.Tensor) -> dict[str, torch.Tensor]:
    """``<G_s, B_r>`` with ``G_s = W_s W_s^T``, ``B_r = A_r A_r^T``, for senders s in an earlier layer than
    receivers r ([N, N] per kind; other entries are not meaningful), in bounded memory.

    ``write`` [N, d, r] (layer-major), ``reads`` {kind: [N, d, k]}, ``layer`` [N] ascending.
    """
    N, d, _ = write.shape
    s_step = max(1, GRAM_BYTES // (d * d * 4))
    r_step = max(1, GRAM_BYTES // 4 // (d * d * 4))  # wide products: skinny ones are several times slower
    totals = {kind: torch.zeros(N, N) for kind in reads}
    for s_lo in range(0, N, s_step):
        s_hi = min(N, s_lo + s_step)
        first = int(torch.searchsorted(layer, layer[s_lo], right=True))  # first receiver after these senders' layer
        if first >= N:
            break
        G = _gram(write[s_lo:s_hi])
        for kind, A in reads.items():
            for r_lo in range(first, N, r_step):
                r_hi = min(N, r_lo + r_step)
                n_s = int(torch.searchsorted(layer[s_lo:s_hi], layer[r_hi - 1]))  # senders before the last receiver
                totals[kind][s_lo:s_lo + n_s, r_lo:r_hi] = G[:n_s] @ _gram(A[r_lo:r_hi]).T
    return totals


def haar_bases(draws: int, d: int, r: int, generator: torch.Generator) -> torch.Tensor:
    """[draws, d, r] random orthonormal column sets, uniformly (Haar) distributed."""
    z = torch.randn(draws, d, r, generator=generator)
    with one_thread():
        q, rr = torch.linalg.qr(z)
    return q * torch.sign(torch.diagonal(rr, dim1=-2, dim2=-1)).unsqueeze(-2)


def composition_scores(circuits: HeadCircuits, null_draws: int = 128, seed: int = 0) -> dict[str, torch.Tensor]:
    """Q/K/V composition of every (sender, receiver) head pair, with null-model z-scores.

    ``score^2 = ||S_s V_s^T A_r||_F^2 / (||S_s||^2 ||A_r||_F^2) = <G_s, B_r> / ...`` with the Gram
    matrices ``G_s = V_s S_s^2 V_s^T`` and ``B_r = A_r A_r^T`` (d_model x d_model): one matrix
    product over all pairs, d_model^2 per pair instead of rank^2 * d_model.
    Null: for Haar-random write directions ``Vr``, ``||s_i vr_i^T A_r||^2`` has the law of
    ``s_i^2 sum_j sigma_j(A_r)^2 Vr[j, i]^2`` (rotation invariance), so every draw for every pair
    costs a few multiply-adds.

    A second, empirical null: ``{kind}_z_senders`` standardises each score against the scores of all
    real senders (earlier layers) into the same receiver: which senders stand out for this receiver,
    where the same-spectrum null says how far each is from chance.

    Returns tensors: ``{kind}`` [N, N] (sender, receiver), NaN unless the sender's layer is earlier;
    ``{kind}_z``, ``{kind}_null_mean``, ``{kind}_null_std``, ``{kind}_z_senders`` [N, N]; ``singular_values`` [N, r];
    ``ov_norm``, ``qk_norm`` [N]; ``layer``, ``head``, ``kv_group`` [N].
    """
    c = circuits
    N, d, r = c.V.shape
    s2 = c.S.square()
    ov_norm = s2.sum(-1).sqrt()
    causal = c.layer[:, None] < c.layer[None, :]
    nan = torch.tensor(float("nan"))
    totals = causal_gram_products(c.V * c.S[:, None, :], c.reads, c.layer)
    vr = haar_bases(null_draws, d, r, torch.Generator().manual_seed(seed))  # [draws, d, r]
    out: dict[str, torch.Tensor] = {"singular_values": c.S, "ov_norm": ov_norm, "layer": c.layer,
                                    "head": c.head, "kv_group": c.kv_group}
    for kind in KINDS:
        A = c.reads[kind]
        a_norm = A.square().sum((-1, -2)).sqrt()  # [N] ||QK_r||_F or ||OV_r||_F
        if kind == "Q":
            out["qk_norm"] = a_norm
        denom = ov_norm[:, None] * a_norm[None, :]
        score = totals[kind].clamp(min=0).sqrt() / denom
        with one_thread():
            sigma2 = torch.linalg.eigvalsh(A.transpose(-1, -2) @ A).clamp(min=0)  # [N, k] squared singular values
        k = sigma2.shape[-1]
        per_channel = torch.einsum("xji,nj->xin", vr[:, :k].square(), sigma2)  # [draws, r, N]
        null = torch.einsum("si,xin->sxn", s2, per_channel).sqrt() / denom[:, None, :]  # [N, draws, N]
        mean, std = null.mean(1), null.std(1)
        out[kind] = torch.where(causal, score, nan)
        out[f"{kind}_z"] = torch.where(causal, (score - mean) / std.clamp(min=1e-12), nan)
        out[f"{kind}_null_mean"] = torch.where(causal, mean, nan)
        out[f"{kind}_null_std"] = torch.where(causal, std, nan)
        # empirical null ("shuffled heads"): this sender against all real senders into the same receiver
        real = out[kind]
        mean_r, std_r = real.nanmean(0, keepdim=True), _nanstd(real, 0)
        out[f"{kind}_z_senders"] = (real - mean_r) / std_r.clamp(min=1e-12)
    return out


def _nanstd(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Sample standard deviation ignoring NaNs (NaN where fewer than two values)."""
    n = (~x.isnan()).sum(dim, keepdim=True)
    dev = (x - x.nanmean(dim, keepdim=True)).nan_to_num(0.0).square().sum(dim, keepdim=True)
    return torch.where(n > 1, (dev / (n - 1).clamp(min=1)).sqrt(), torch.tensor(float("nan")))


def edge_channels(circuits: HeadCircuits, kind: str, senders: torch.Tensor, receivers: torch.Tensor) -> torch.Tensor:
    """Per-channel squared composition ``s_i^2 ||v_i^T A_r||^2`` for given (sender, receiver) pairs -> [n, r].

    Summed over channels it is ``||OV_s M_r||_F^2`` (the squared numerator of the score) exactly.
    """
    c = circuits
    N, d, r = c.V.shape
    k = c.reads[kind].shape[-1]
    step = max(1, CHUNK_BYTES // (d * (r + k) * 4))
    out = []
    for lo in range(0, len(senders), step):
        s, rc = senders[lo:lo + step], receivers[lo:lo + step]
        prod = (c.V[s] * c.S[s, None, :]).transpose(-1, -2) @ c.reads[kind][rc]  # [n, r, k]
        out.append(prod.square().sum(-1))
    return torch.cat(out) if out else torch.zeros(0, r)


def select_edges(scores: dict[str, torch.Tensor], cfg: HeadGraphConfig) -> dict[str, torch.Tensor]:
    """Per kind, an [N, N] bool mask of the edges the graph keeps (thresholds, then top-n per receiver)."""
    keep = {}
    for kind in KINDS:
        score, z = scores[kind], scores[f"{kind}_z"]
        mask = ~score.isnan()
        if cfg.min_score is not None:
            mask &= score >= cfg.min_score
        if cfg.min_z is not None:
            mask &= z >= cfg.min_z
        if cfg.top_per_receiver is not None:
            key = torch.where(mask, _rank_value(scores, kind, cfg.rank_by).nan_to_num(-math.inf), torch.tensor(-math.inf))
            n = min(cfg.top_per_receiver, key.shape[0])
            best = torch.zeros_like(mask)
            best.scatter_(0, key.topk(n, dim=0).indices, True)
            mask &= best
        keep[kind] = mask
    return keep


def _rank_value(scores: dict[str, torch.Tensor], kind: str, rank_by: str) -> torch.Tensor:
    return scores[kind] if rank_by == "score" else scores[f"{kind}_{rank_by}"]


def add_edge_channels(circuits: HeadCircuits, scores: dict[str, torch.Tensor], keep: dict[str, torch.Tensor]) -> None:
    """Store the channels of the kept edges in ``scores``: ``{kind}_edges`` [n, 2] (sender, receiver)
    and ``{kind}_edge_channels`` [n, r] (each channel's fraction of the squared score; rows sum to 1)."""
    for kind in KINDS:
        pairs = keep[kind].nonzero()
        energy = edge_channels(circuits, kind, pairs[:, 0], pairs[:, 1])
        scores[f"{kind}_edges"] = pairs
        scores[f"{kind}_edge_channels"] = energy / energy.sum(-1, keepdim=True).clamp(min=1e-30)


def build_graph(scores: dict[str, torch.Tensor], keep: dict[str, torch.Tensor], cfg: HeadGraphConfig,
                model_name: str = "") -> nx.DiGraph:
    """A DiGraph over heads ``L.H``: node attributes layer, head, kv_group, ov_norm, qk_norm; one edge
    per (sender, receiver) pair kept for at least one kind (``scores`` must hold the edge channels).

    Edge attributes: ``type`` (the kept kind ranking highest by ``cfg.rank_by``), its ``score``, ``z``,
    ``z_senders`` and ``channels`` (the top ``cfg.top_channels`` as {channel, share, singular_value};
    channel 0 has the largest singular value); ``types`` (all kept kinds, best first, comma-joined);
    for every kind ``{kind}_score``, ``{kind}_z``, ``{kind}_z_senders`` (kept or not), and
    ``{kind}_channels`` for each kept kind.
    """
    g = nx.DiGraph(model=model_name, null_draws=cfg.null_draws, rank_by=cfg.rank_by,
                   weights="folded norms (fold_ln); query/key norm scales folded; biases and rotary left out")
    layer, head, group = scores["layer"].tolist(), scores["head"].tolist(), scores["kv_group"].tolist()
    names = [head_name(a, b) for a, b in zip(layer, head)]
    for i, name in enumerate(names):
        g.add_node(name, layer=layer[i], head=head[i], kv_group=group[i],
                   ov_norm=float(scores["ov_norm"][i]), qk_norm=float(scores["qk_norm"][i]))
    sv = scores["singular_values"]
    channels: dict[tuple[int, int, str], list[dict]] = {}
    for kind in KINDS:
        share, idx = scores[f"{kind}_edge_channels"].topk(min(cfg.top_channels, sv.shape[1]), dim=-1)
        for (s, r), f, i in zip(scores[f"{kind}_edges"].tolist(), share.tolist(), idx.tolist()):
            channels[s, r, kind] = [{"channel": c, "share": x, "singular_value": float(sv[s, c])} for c, x in zip(i, f)]
    key = "score" if cfg.rank_by == "score" else cfg.rank_by
    for s, r in torch.stack([keep[k] for k in KINDS]).any(0).nonzero().tolist():
        attrs: dict = {}
        for kind in KINDS:
            attrs[f"{kind}_score"] = float(scores[kind][s, r])
            attrs[f"{kind}_z"] = float(scores[f"{kind}_z"][s, r])
            attrs[f"{kind}_z_senders"] = float(scores[f"{kind}_z_senders"][s, r])
        kept = sorted((k for k in KINDS if keep[k][s, r]), key=lambda k: -attrs[f"{k}_{key}"])
        for kind in kept:
            attrs[f"{kind}_channels"] = channels[s, r, kind]
        best = kept[0]
        g.add_edge(names[s], names[r], type=best, types=",".join(kept), score=attrs[f"{best}_score"],
                   z=attrs[f"{best}_z"], z_senders=attrs[f"{best}_z_senders"], channels=channels[s, r, best], **attrs)
    return g


def weight_graph(model: HookedTransformer, cfg: HeadGraphConfig | None = None) -> tuple[nx.DiGraph, dict[str, torch.Tensor]]:
    """The head weight graph of a model: ``(graph, scores)``.

    ``scores`` holds every pair's numbers (``composition_scores``) and the kept edges' channels
    (``add_edge_channels``); the graph holds the kept edges (``select_edges``, ``build_graph``).
    """
    cfg = cfg or HeadGraphConfig()
    with torch.no_grad():
        circuits = HeadCircuits.from_model(model)
        scores = composition_scores(circuits, cfg.null_draws, cfg.seed)
        keep = select_edges(scores, cfg)
        add_edge_channels(circuits, scores, keep)
    return build_graph(scores, keep, cfg, getattr(model.cfg, "model_name", "")), scores


def top_edges(scores: dict[str, torch.Tensor], kind: str, n: int = 10, key: str = "z",
              min_receiver_layer: int = 0) -> list[dict]:
    """The n best (sender, receiver) pairs of one kind by ``key`` ("z" or "score"), as plain dicts."""
    value = scores[f"{kind}_z"] if key == "z" else scores[kind]
    value = torch.where(scores["layer"][None, :] >= min_receiver_layer, value, torch.tensor(float("nan")))
    flat = torch.nan_to_num(value, nan=-math.inf).flatten()
    names = [head_name(a, b) for a, b in zip(scores["layer"].tolist(), scores["head"].tolist())]
    rows = []
    for i in flat.topk(min(n, int((flat > -math.inf).sum()))).indices.tolist():
        s, r = divmod(i, len(names))
        rows.append({"sender": names[s], "receiver": names[r], "type": kind, "score": float(scores[kind][s, r]),
                     "z": float(scores[f"{kind}_z"][s, r])})
    return rows


def save(graph: nx.DiGraph, scores: dict[str, torch.Tensor], out: str | Path) -> dict[str, Path]:
    """Write ``heads.graphml``, ``heads.json`` (node-link) and ``scores.safetensors`` into ``out``, atomically."""
    out = ensure_dir(out)
    flat = graph.copy()
    for _, _, data in flat.edges(data=True):
        for key, value in data.items():
            if isinstance(value, list):
                data[key] = json.dumps(value)  # GraphML holds scalars only
    paths = {"graphml": out / "heads.graphml", "json": out / "heads.json", "scores": out / "scores.safetensors"}
    write_text(paths["graphml"], "\n".join(nx.generate_graphml(flat)) + "\n")
    write_json(paths["json"], graph)
    save_tensors(paths["scores"], scores, metadata={"layout": "heads flattened layer-major: index = layer * n_heads + head; "
                                                              "[sender, receiver]; NaN where the sender is not in an earlier layer"})
    return paths


def run(model: str | HookedTransformer, out: str | Path, cfg: HeadGraphConfig | None = None) -> dict:
    """Build a model's weight graph and write it under ``out`` (graph, scores, ``summary.json``).

    ``model``: a name for ``saecircuits.model.loading.load`` or a loaded model. Returns the summary: the time
    the graph took (seconds, model loading excluded), sizes, and the top edges of each kind by z-score.
    ``out`` is written whole: staged beside it and swapped in, so an interrupted run leaves the previous one.
    """
    cfg = cfg or HeadGraphConfig()
    target = check_output_dir(out)  # before loading the model
    if isinstance(model, str):
        model = load(model)
    start = time.perf_counter()
    graph, scores = weight_graph(model, cfg)
    seconds = time.perf_counter() - start
    with staged_dir(target) as tmp:
        paths = save(graph, scores, tmp)
        summary = {
            "model": getattr(model.cfg, "model_name", ""), "n_layers": model.cfg.n_layers, "n_heads": model.cfg.n_heads,
            "n_key_value_heads": model.cfg.n_key_value_heads or model.cfg.n_heads, "seconds": seconds,
            "pairs": int((~scores["Q"].isnan()).sum()), "edges": graph.number_of_edges(), "config": cfg.model_dump(),
            "top_edges": {kind: top_edges(scores, kind, 10) for kind in KINDS},
            "files": {k: str(target / v.name) for k, v in paths.items()},
        }
        write_json(tmp / "summary.json", summary)
    return summary

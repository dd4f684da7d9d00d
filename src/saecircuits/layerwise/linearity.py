"""How linear each layer is: one affine map from the residual at depth s to depth s + 1
("Your Transformer is Secretly Linear", Razzhigaev et al. 2024; token-level nonlinearity as in
LLM-Microscope, 2025).

For every pair of consecutive depths, least squares ``Y ~ [X, 1] A`` is fit on the kept tokens of
the text's train split (normal equations accumulated batch by batch in float64: memory is
O(d_model^2) per pair, whatever the token count) and scored by R^2 = 1 - SSE / SST, in-sample (the
papers' linearity score: centring and Frobenius normalisation do not change it for an affine fit)
and on held-out documents. ``normalize="token"`` divides each token's residual by its norm first,
so the few huge-norm tokens do not decide the fit. Per token, the held-out error
||y_hat - y||^2 / (SST / n) (its mean is 1 - R^2) is averaged over depths and reported for the most
and least linear token strings.
"""

from __future__ import annotations

import torch
from transformer_lens import HookedTransformer

from saecircuits.core.errors import SaecircuitsError
from saecircuits.layerwise.config import LinearityConfig
from saecircuits.layerwise.results import LinearityResult, TokenNonlinearity, TokenTable
from saecircuits.layerwise.stream import activations, stream_hooks, stream_labels, token_batches


class LinearFit:
    """Streaming least squares ``y ~ [x, 1] A`` with in-sample and held-out R^2."""

    def __init__(self, d_in: int, d_out: int):
        self.xtx = torch.zeros(d_in + 1, d_in + 1, dtype=torch.float64)
        self.xty = torch.zeros(d_in + 1, d_out, dtype=torch.float64)
        self.sum_y = torch.zeros(d_out, dtype=torch.float64)
        self.sum_yy = 0.0
        self.n = 0
        self.a: torch.Tensor | None = None

    @staticmethod
    def _aug(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], 1)

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        xa, y = self._aug(x), y.double()
        self.xtx += xa.T @ xa
        self.xty += xa.T @ y
        self.sum_y += y.sum(0)
        self.sum_yy += float((y * y).sum())
        self.n += len(y)

    def solve(self, ridge: float = 1e-6) -> torch.Tensor:
        if self.n < 2:
            raise SaecircuitsError("too few tokens to fit a linear map between layers", "raise --tokens")
        lam = ridge * float(self.xtx.diagonal()[:-1].mean())
        reg = torch.eye(len(self.xtx), dtype=torch.float64) * lam
        reg[-1, -1] = 0.0  # the intercept is not penalised
        self.a = torch.linalg.lstsq(self.xtx + reg, self.xty).solution
        return self.a

    def r2_in_sample(self) -> float:
        a = self.a if self.a is not None else self.solve()
        sse = self.sum_yy - 2 * float((a * self.xty).sum()) + float((a * (self.xtx @ a)).sum())
        sst = self.sum_yy - float(self.sum_y @ self.sum_y) / self.n
        return 1.0 - max(sse, 0.0) / max(sst, 1e-30)

    def errors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-row squared error ||y_hat - y||^2 of the fitted map [n]."""
        a = self.a if self.a is not None else self.solve()
        return ((self._aug(x) @ a - y.double()) ** 2).sum(-1)


class HeldOut:
    """Running SSE and SST of held-out rows."""

    def __init__(self, d: int):
        self.sse, self.sum_yy, self.n = 0.0, 0.0, 0
        self.sum_y = torch.zeros(d, dtype=torch.float64)

    def add(self, err: torch.Tensor, y: torch.Tensor) -> None:
        y = y.double()
        self.sse += float(err.sum())
        self.sum_y += y.sum(0)
        self.sum_yy += float((y * y).sum())
        self.n += len(y)

    @property
    def sst(self) -> float:
        return self.sum_yy - float(self.sum_y @ self.sum_y) / max(self.n, 1)

    def r2(self) -> float:
        return 1.0 - self.sse / max(self.sst, 1e-30)


def _norm(x: torch.Tensor, how: str) -> torch.Tensor:
    x = x.double()
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12) if how == "token" else x


@torch.no_grad()
def measure(model: HookedTransformer, cfg: LinearityConfig) -> dict:
    """R^2 of the best affine map from each depth to the next, in-sample and held out (``LinearityResult``'s JSON)."""
    hooks = stream_hooks(model)
    n_pairs, d = len(hooks) - 1, model.cfg.d_model
    acts = activations(model, hooks)
    fits = [LinearFit(d, d) for _ in range(n_pairs)]
    n_train = 0
    for tokens in token_batches(model, cfg.stream, "train"):
        a = acts.activations(tokens)
        keep = acts.keep_mask(tokens)
        xs = [_norm(a[h][keep], cfg.normalize) for h in hooks]
        for s, f in enumerate(fits):
            f.add(xs[s], xs[s + 1])
        n_train += int(keep.sum())
    for f in fits:
        f.solve(cfg.ridge)
    held = [HeldOut(d) for _ in range(n_pairs)]
    err_rows, tok_rows = [], []
    eval_stream = cfg.stream.model_copy(update={"tokens": cfg.eval_tokens})
    split = "eval" if cfg.stream.text.eval_fraction > 0 else "train"
    for tokens in token_batches(model, eval_stream, split):
        a = acts.activations(tokens)
        keep = acts.keep_mask(tokens)
        xs = [_norm(a[h][keep], cfg.normalize) for h in hooks]
        errs = []
        for s, (f, h) in enumerate(zip(fits, held)):
            e = f.errors(xs[s], xs[s + 1])
            h.add(e, xs[s + 1])
            errs.append(e)
        err_rows.append(torch.stack(errs, 1))  # [kept, pairs]
        tok_rows.append(tokens.reshape(-1)[keep])
    errs = torch.cat(err_rows)
    per_tok = (errs / torch.tensor([h.sst / h.n for h in held], dtype=torch.float64)).mean(1)  # [kept]
    labels = stream_labels(model)
    few = n_train < 4 * (d + 1)
    return LinearityResult(
        warning=f"{n_train} training tokens for {d + 1} coefficients per output: the fit is close to "
                "interpolating, so in-sample R^2 is inflated and held-out R^2 unstable; use --tokens of at "
                f"least {8 * (d + 1):,}" if few else None,
        model=model.cfg.model_name, normalize=cfg.normalize,
        pairs=[f"{labels[s]}->{labels[s + 1]}" for s in range(n_pairs)], layers=labels[1:],
        train_tokens=n_train, eval_tokens=held[0].n, text=cfg.stream.text.model_dump(mode="json"),
        r2_in_sample=[f.r2_in_sample() for f in fits],
        r2_held_out=[h.r2() for h in held],
        tokens=_token_table(model, torch.cat(tok_rows), per_tok, cfg.top_tokens),
        note="pair a->b is the map computed by block b; held out: the text's eval split"
        if split == "eval" else "no eval split (eval_fraction 0): held out is the start of the train split",
    ).to_json()


def _token_table(model: HookedTransformer, toks: torch.Tensor, err: torch.Tensor, k: int, min_count: int = 3) -> TokenTable:
    """The token strings with the highest and lowest mean nonlinearity (seen at least ``min_count`` times)."""
    uniq, inv = toks.unique(return_inverse=True)
    count = torch.bincount(inv, minlength=len(uniq))
    mean = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inv, err) / count
    ok = (count >= min_count).nonzero().squeeze(1)
    order = ok[mean[ok].argsort(descending=True)]

    def rows(idx: torch.Tensor) -> list[TokenNonlinearity]:
        return [TokenNonlinearity(token=model.tokenizer.decode([int(uniq[i])]), count=int(count[i]),
                                  nonlinearity=float(mean[i])) for i in idx.tolist()]

    return TokenTable(mean_nonlinearity=float(err.mean()), most_nonlinear=rows(order[:k]),
                      most_linear=rows(order.flip(0)[:k]))

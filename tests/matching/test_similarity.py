"""SVCCA, RSA and linear CKA against reference computations written from their definitions, and
the shuffled-pairing null: exact on permuted data, uniform p-values on independent data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import kstest, ortho_group, spearmanr

from saecircuits.matching import similarity as sim


def _cka_reference(X: np.ndarray, Y: np.ndarray) -> float:
    """CKA from HSIC with linear kernels and the centring matrix H = I - 11ᵀ/n."""
    n = X.shape[0]
    H = np.eye(n) - np.ones((n, n)) / n
    K, L = X @ X.T, Y @ Y.T

    def hsic(A, B):
        return np.trace(A @ H @ B @ H) / (n - 1) ** 2

    return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


def _svcca_reference(X: np.ndarray, Y: np.ndarray, keep: float = 0.99, max_dims: int | None = None) -> float:
    """SVD truncation to `keep` of the variance (and at most max_dims), then CCA from Σxx^-1/2 Σxy Σyy^-1/2."""

    def truncate(A):
        A = A - A.mean(0)
        U, S, _ = np.linalg.svd(A, full_matrices=False)
        frac = np.cumsum(S**2) / np.sum(S**2)
        k = int(np.searchsorted(frac, keep - 1e-12)) + 1
        k = min(k, max_dims or k)
        return U[:, :k] * S[:k]

    def inv_sqrt(C):
        w, V = np.linalg.eigh(C)
        return V @ np.diag(w**-0.5) @ V.T

    A, B = truncate(X), truncate(Y)
    Cxx, Cyy, Cxy = A.T @ A, B.T @ B, A.T @ B
    rho = np.linalg.svd(inv_sqrt(Cxx) @ Cxy @ inv_sqrt(Cyy), compute_uv=False)
    return float(np.mean(np.clip(rho, 0, 1)))


def _rsa_reference(X: np.ndarray, Y: np.ndarray) -> float:
    iu = np.triu_indices(X.shape[0], 1)
    return float(spearmanr(np.corrcoef(X)[iu], np.corrcoef(Y)[iu]).statistic)


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 6))
    Y = X @ rng.normal(size=(6, 5)) + 0.8 * rng.normal(size=(40, 5))
    return X, Y


def test_cka_equals_hsic_reference_and_is_rotation_invariant(pair):
    X, Y = pair
    ref = _cka_reference(X, Y)
    assert sim.linear_cka(X, Y) == pytest.approx(ref, rel=1e-10)
    Q = ortho_group.rvs(5, random_state=1)
    assert sim.linear_cka(X, 3.0 * Y @ Q) == pytest.approx(ref, rel=1e-10)
    assert sim.linear_cka(X, X) == pytest.approx(1.0)


def test_svcca_equals_reference(pair):
    X, Y = pair
    assert sim.svcca(X, Y) == pytest.approx(_svcca_reference(X, Y), abs=1e-9)
    assert sim.svcca(X, Y, keep_variance=0.8) == pytest.approx(_svcca_reference(X, Y, 0.8), abs=1e-9)
    Q = ortho_group.rvs(6, random_state=2)
    assert sim.svcca(X @ Q, Y) == pytest.approx(sim.svcca(X, Y), abs=1e-9)


def test_svcca_with_more_dims_than_samples_uses_the_sample_gram():
    rng = np.random.default_rng(3)
    X, Y = rng.normal(size=(12, 30)), rng.normal(size=(12, 25))
    assert sim.svcca(X, Y) == pytest.approx(_svcca_reference(X, Y), abs=1e-8)


@pytest.mark.parametrize("keep", [0.99, 0.3])
def test_svcca_capped_dims_equals_reference(keep):
    """With max_dims far below the Gram's size only the top eigenpairs are computed; same answer as the full SVD."""
    rng = np.random.default_rng(4)
    X = rng.normal(size=(120, 80)) @ np.diag(np.linspace(3, 0.1, 80))
    Y = X[:, :60] @ rng.normal(size=(60, 70)) + 0.5 * rng.normal(size=(120, 70))
    Z = rng.normal(size=(50, 8))
    wide = (Z @ rng.normal(size=(8, 200)) + 0.1 * rng.normal(size=(50, 200)), Z @ rng.normal(size=(8, 180)) + rng.normal(size=(50, 180)))
    for x, y in ((X, Y), wide):  # more samples than dims (the feature Gram), then fewer (the sample Gram)
        got = sim.svcca(x, y, keep_variance=keep, max_dims=10)
        assert got == pytest.approx(_svcca_reference(x, y, keep, max_dims=10), abs=1e-8)
        assert sim.reduced_basis(torch.from_numpy(x), keep, 10).shape[1] == min(10, sim.reduced_basis(torch.from_numpy(x), keep).shape[1])


def test_rsa_equals_spearman_of_similarity_matrices(pair):
    X, Y = pair
    assert sim.rsa(X, Y) == pytest.approx(_rsa_reference(X, Y), abs=1e-10)


@pytest.mark.parametrize("measure", ["cka", "svcca", "rsa"])
def test_vectorised_null_equals_the_measure_on_shuffled_pairs(pair, measure):
    X, Y = pair
    prep = sim.prepare(measure, X, Y)
    g = torch.Generator().manual_seed(5)
    perms = torch.stack([torch.randperm(len(X), generator=g) for _ in range(4)])
    got = prep.score(perms).numpy()
    want = [sim.MEASURE_FUNCTIONS[measure](X, Y[p.numpy()]) for p in perms]
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert float(prep.score(torch.arange(len(X))[None])[0]) == pytest.approx(prep.observed(), abs=1e-5)


def test_cka_gram_and_matmul_forms_agree():
    rng = np.random.default_rng(4)
    X, Y = rng.normal(size=(10, 60)), rng.normal(size=(10, 70))  # p·q > 300 n: the Gram form
    prep = sim.prepare("cka", X, Y)
    assert prep.gram
    perms = torch.stack([torch.randperm(10) for _ in range(3)])
    want = [sim.linear_cka(X, Y[p.numpy()]) for p in perms]
    np.testing.assert_allclose(prep.score(perms).numpy(), want, atol=1e-5)


@pytest.mark.parametrize("measure", ["cka", "svcca", "rsa"])
def test_null_gives_uniform_p_values_on_independent_data(measure):
    rng = np.random.default_rng(7)
    ps = []
    for i in range(150):
        X, Y = rng.normal(size=(16, 3)), rng.normal(size=(16, 3))
        ps.append(sim.permutation_test(X, Y, measure, n_null=99, seed=i)["p_value"])
    ps = np.array(ps)
    # permutation p-values live on {1/100, ..., 1}: spread by half a step before the KS test
    ps = ps - rng.uniform(0, 0.01, len(ps))
    assert kstest(ps, "uniform").pvalue > 1e-3
    assert 0.35 < ps.mean() < 0.65


@pytest.mark.parametrize("measure", ["cka", "svcca", "rsa"])
def test_null_rejects_on_dependent_data(measure):
    rng = np.random.default_rng(8)
    X = rng.normal(size=(60, 5))
    Y = X @ ortho_group.rvs(5, random_state=3) + 0.1 * rng.normal(size=(60, 5))
    res = sim.permutation_test(X, Y, measure, n_null=200)
    assert res["p_value"] == pytest.approx(1 / 201)
    assert res["score"] > res["null_q99"]


def test_compare_reports_null_and_random_subset_baseline():
    rng = np.random.default_rng(9)
    pool_a = rng.normal(size=(80, 6))
    pool_b = pool_a @ rng.normal(size=(6, 6))
    pool_b[40:] = rng.normal(size=(40, 6))  # only the first 40 features correspond
    X, Y = pool_a[:30], pool_b[:30]
    out = sim.compare(X, Y, n_null=100, pool=(pool_a, pool_b), n_subsets=20, rsa_max_points=25)
    for m in ("svcca", "rsa", "cka"):
        assert out[m]["n_null"] == 100 and "random_subset" in out[m]
        assert out[m]["p_value"] < 0.05
    assert out["rsa"]["points"] == 25
    assert out["cka"]["score"] > out["cka"]["random_subset"]["mean"]


def test_compare_columns_axis_draws_feature_subsets():
    rng = np.random.default_rng(10)
    A = rng.normal(size=(50, 12))
    B = A + 0.1 * rng.normal(size=(50, 12))
    out = sim.compare(A[:, :5], B[:, :5], ["cka"], n_null=50, pool=(A, B), pool_axis="columns", n_subsets=10)
    assert out["cka"]["random_subset"]["size"] == 5


def test_similarity_matrix_from_pair_results():
    results = [
        {"a": "x", "b": "u", "summary": {"mean_r": 0.5}, "similarity": {"decoder": {"svcca": {"score": 0.9, "p_value": 0.001}}}},
        {"a": "x", "b": "v", "summary": {"mean_r": 0.2}, "similarity": {}},
        {"a": "y", "b": "u", "summary": {"mean_r": 0.3}, "similarity": {"decoder": {"svcca": {"score": 0.4, "p_value": 0.5}}}},
    ]
    m = sim.similarity_matrix(results, value="svcca")
    assert m["rows"] == ["x", "y"] and m["cols"] == ["u", "v"]
    assert m["values"] == [[0.9, None], [0.4, None]]
    assert m["p_values"][0][0] == 0.001
    assert sim.similarity_matrix(results, value="mean_r")["values"] == [[0.5, 0.2], [0.3, None]]


def test_depth_alignment_finds_a_diagonal_under_main_effects():
    """A relative-depth diagonal hidden under strong row and column effects (column 0 wins every row):
    the raw argmax says column 0, the interaction recovers the diagonal; the interaction is invariant to
    adding any row and column constants; the exact permutation p-value equals a brute-force count."""
    import itertools

    rng = np.random.default_rng(0)
    depth = {"r0": 0.2, "r1": 0.4, "r2": 0.6, "r3": 0.8}
    cdepth = {"c0": 0.22, "c1": 0.39, "c2": 0.61, "c3": 0.78}
    diag = 0.05 * np.eye(4) + 0.002 * rng.standard_normal((4, 4))
    main = np.array([0.4, 0.3, 0.2, 0.1])[None] + np.array([0.1, 0.05, 0.0, -0.05])[:, None]
    m = {"rows": list(depth), "cols": list(cdepth), "values": (main + diag).tolist()}
    out = sim.depth_alignment(m, depth, cdepth)
    assert set(out["best_col_raw"].values()) == {"c0"}
    assert out["best_col_interaction"] == {"r0": "c0", "r1": "c1", "r2": "c2", "r3": "c3"}
    assert out["best_row_interaction"] == {"c0": "r0", "c1": "r1", "c2": "r2", "c3": "r3"}
    shifted = {**m, "values": (main + diag + rng.standard_normal((4, 1)) + rng.standard_normal((1, 4))).tolist()}
    assert np.allclose(sim.depth_alignment(shifted, depth, cdepth)["interaction"], out["interaction"])
    inter = np.array(out["interaction"])
    close = -np.abs(np.array(list(depth.values()))[:, None] - np.array(list(cdepth.values()))[None])
    rho = [spearmanr(inter[list(p)].ravel(), close.ravel())[0] for p in itertools.permutations(range(4))]
    assert out["spearman_with_depth"] == pytest.approx(rho[0])
    assert out["p_value"] == pytest.approx(np.mean(np.array(rho) >= rho[0] - 1e-12)) and out["permutations"] == 24
    assert out["p_value"] == pytest.approx(1 / 24)  # the diagonal is the best of all 24 row orders
    additive = sim.depth_alignment({**m, "values": main.tolist()}, depth, cdepth)
    assert additive["spearman_with_depth"] is None and additive["p_value"] is None and additive["best_col_interaction"] == {}
    anti = {**m, "values": (main + diag[::-1]).tolist()}
    assert sim.depth_alignment(anti, depth, cdepth)["spearman_with_depth"] < 0
    from saecircuits.core.errors import SaecircuitsError

    with pytest.raises(SaecircuitsError, match="complete matrix"):
        sim.depth_alignment({**m, "values": [[None, 1.0], [1.0, 1.0]], "rows": ["r0", "r1"], "cols": ["c0", "c1"]},
                            depth, cdepth)


def test_bad_input_is_one_clear_error():
    from saecircuits.core.errors import SaecircuitsError

    with pytest.raises(SaecircuitsError, match="same number of samples"):
        sim.linear_cka(np.ones((5, 2)), np.ones((6, 2)))
    with pytest.raises(SaecircuitsError, match="unknown similarity measure"):
        sim.prepare("cca", np.eye(4), np.eye(4))


def test_cka_gram_form_for_few_samples_equals_reference():
    rng = np.random.default_rng(11)
    X, Y = rng.normal(size=(8, 30)), rng.normal(size=(8, 20))
    assert sim.linear_cka(X, Y) == pytest.approx(_cka_reference(X, Y), rel=1e-10)


def test_svcca_reports_saturation_when_dims_fill_the_samples():
    rng = np.random.default_rng(12)
    res = sim.permutation_test(rng.normal(size=(10, 8)), rng.normal(size=(10, 8)), "svcca", n_null=10)
    assert res["saturated"] and res["null_mean"] >= 0.75  # 6 of 8 correlations are forced to 1 whatever the pairing
    assert not sim.permutation_test(rng.normal(size=(200, 4)), rng.normal(size=(200, 4)), "svcca", n_null=10)["saturated"]

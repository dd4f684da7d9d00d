"""The typed matching result: its JSON is exactly what ``match_saes`` returns and ``write_match`` writes."""

from __future__ import annotations

import json

import torch

from saecircuits.core.files import read_json
from saecircuits.matching import MatchConfig, MatchResult, match_saes
from saecircuits.matching.outputs import pair_folder, read_match, write_match
from saecircuits.matching.result import MatchedPair, PairResult
from saecircuits.sae import SAEConfig, build
from saecircuits.text.config import TextConfig


def _sae(d_in: int, seed: int, hook: str = "blocks.1.hook_resid_post", arch: str = "topk"):
    sae = build(SAEConfig(architecture=arch, hook=hook, d_sae=32, k=4, seed=seed), d_in)
    with torch.no_grad():
        sae.b_enc.copy_(0.1 * torch.randn(32, generator=torch.Generator().manual_seed(seed + 100)))
    return sae.eval()


def test_match_result_json_round_trip_on_a_real_result(tiny_model, tmp_path):
    d = tiny_model.cfg.d_model
    saes_a = {"A": _sae(d, 0)}
    saes_b = {"B": _sae(d, 1), "C": _sae(d, 2, "blocks.2.hook_resid_post", "jumprelu")}
    cfg = MatchConfig(text=TextConfig(source="stdlib", context_size=32), tokens=600, batch_contexts=8, null=10,
                      random_subsets=2, sample_tokens=100, min_fires=2, min_r=0.0, max_special_share=1.0)
    res = match_saes(saes_a, saes_b, tiny_model, None, cfg, progress=False)
    typed = MatchResult.from_json(res)
    assert typed.to_json() == res
    assert json.dumps(typed.to_json()) == json.dumps(res)  # same keys in the same order
    assert typed.timing["tokens"] == 600 and typed.saes["A"].hook == "blocks.1.hook_resid_post"
    ab = typed.results[0]
    assert isinstance(ab, PairResult) and (ab.a, ab.b) == ("A", "B") and ab.similarity["decoder"]
    assert ab.pairs and all(isinstance(p, MatchedPair) for p in ab.pairs)
    for r in res["results"]:
        assert PairResult.from_json(r).to_json() == r
        assert all(MatchedPair.from_json(p).to_json() == p for p in r["pairs"])

    write_match(res, tmp_path / "m")
    brief = read_json(tmp_path / "m" / "match.json")
    assert brief == json.loads(json.dumps(typed.to_json(with_pairs=False)))
    assert MatchResult.from_json(brief).to_json() == brief  # match.json: results without their pairs
    assert all(r.pairs is None for r in MatchResult.from_json(brief).results)
    table = read_json(pair_folder(tmp_path / "m", "A", "C") / "table.json")
    assert table == json.loads(json.dumps(res["results"][1]["pairs"]))
    assert read_match(tmp_path / "m") == json.loads(json.dumps(res))


def test_partial_files_read_as_the_report_always_read_them():
    """Keys a partial file lacks read as None (``kept`` as True); the pair names are required."""
    pair = MatchedPair.from_json({"a": 1, "b": 2, "r": 0.5})
    assert pair.kept is True and pair.cos is None and pair.top_tokens_a == []
    match = MatchResult.from_json({"results": [{"a": "x", "b": "y"}], "saes": {"x": {"hook": "h"}}})
    assert match.results[0].summary == {} and match.results[0].pairs is None
    assert match.saes["x"].hook == "h" and match.saes["x"].d_sae is None and match.config == {}

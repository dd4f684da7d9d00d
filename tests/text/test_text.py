import json

import numpy as np
import pytest
import torch

from saecircuits.core.config import validate
from saecircuits.core.errors import SaecircuitsError
from saecircuits.core.tensors import save_tensors
from saecircuits.text.config import TextConfig
from saecircuits.text.source import TextSource, in_eval_split, iter_documents, pack_documents

BOS, SEP = 0, 1


def test_pack_documents_exact():
    docs = iter([[10, 11, 12], [20, 21], [30, 31, 32, 33, 34]])
    out = [c.tolist() for c in pack_documents(docs, context_size=4, bos_id=BOS, sep_id=SEP)]
    # stream: 10 11 12 | SEP 20 21 | SEP 30 31 32 33 34 -> chunks of 3 after BOS, tail [34] dropped
    assert out == [[0, 10, 11, 12], [0, 1, 20, 21], [0, 1, 30, 31], [0, 32, 33, 34]]


def test_pack_without_bos():
    out = [c.tolist() for c in pack_documents(iter([[5, 6, 7, 8, 9]]), 2, None, None)]
    assert out == [[5, 6], [7, 8]]


def _write_corpus(folder, n=40):
    folder.mkdir()
    for i in range(n):
        (folder / f"doc{i:02d}.txt").write_text(f"document number {i}. " * 30)
    return folder


def test_local_folder_deterministic_and_splits_disjoint(tmp_path, byte_tokenizer):
    corpus = _write_corpus(tmp_path / "c")
    cfg = TextConfig(source=str(corpus), context_size=32, seed=3, eval_fraction=0.25)
    a = TextSource(cfg, byte_tokenizer, 0, 1).take(20)
    b = TextSource(cfg, byte_tokenizer, 0, 1).take(20)
    assert torch.equal(a, b)
    c = TextSource(cfg.model_copy(update={"seed": 4}), byte_tokenizer, 0, 1).take(20)
    assert not torch.equal(a, c)
    assert (a[:, 0] == 0).all()  # BOS starts every context
    train = {d for d, _ in iter_documents(cfg, "train")}
    held = {d for d, _ in iter_documents(cfg, "eval")}
    assert train and held and not train & held
    assert len(train) + len(held) == 40


def test_eval_split_is_stable_fraction():
    ids = [f"doc{i}" for i in range(20000)]
    share = sum(in_eval_split(d, 0.1) for d in ids) / len(ids)
    assert 0.09 < share < 0.11


def test_jsonl_and_parquet(tmp_path, byte_tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"body": f"row {i} " * 20} for i in range(10)]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    pq.write_table(pa.table({"body": [r["body"] for r in rows]}), tmp_path / "d.parquet")
    for name in ("d.jsonl", "d.parquet"):
        cfg = TextConfig(source=str(tmp_path / name), context_size=16, text_field="body", eval_fraction=0)
        got = TextSource(cfg, byte_tokenizer, 0, 1).take(5)
        assert got.shape == (5, 16)
        assert byte_tokenizer.decode(got[0, 1:]).startswith("row ")
    with pytest.raises(SaecircuitsError, match="no field 'text'"):
        TextSource(TextConfig(source=str(tmp_path / "d.jsonl")), byte_tokenizer, 0, 1).take(1)


def test_bad_sources(tmp_path, byte_tokenizer):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("")
    with pytest.raises(SaecircuitsError, match="gave no train context"):
        TextSource(TextConfig(source=str(tmp_path / "empty")), byte_tokenizer, 0, 1).take(1)
    with pytest.raises(SaecircuitsError, match="not a built-in source"):
        TextSource(TextConfig(source=str(tmp_path / "missing")), byte_tokenizer, 0, 1).take(1)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 ".encode("latin-1") * 50)
    with pytest.raises(SaecircuitsError, match="not UTF-8"):
        TextSource(TextConfig(source=str(bad), eval_fraction=0), byte_tokenizer, 0, 1).take(1)
    with pytest.raises(SaecircuitsError, match="source is empty"):
        validate(TextConfig, {"source": "  "})


def test_pretokenized(tmp_path, byte_tokenizer):
    toks = torch.arange(50 * 20).reshape(50, 20) % 250
    save_tensors(tmp_path / "t.safetensors", {"tokens": toks})
    np.save(tmp_path / "t.npy", toks.numpy())
    for name in ("t.safetensors", "t.npy"):
        cfg = TextConfig(source=f"tokens:{tmp_path / name}", context_size=16, eval_fraction=0)
        got = TextSource(cfg, byte_tokenizer, 0, 1).take(50)
        assert got.shape == (50, 16)
        assert sorted(got[:, 0].tolist()) == sorted(toks[:, 0].tolist())  # every row once, shuffled
    with pytest.raises(SaecircuitsError, match="shorter than context_size"):
        TextSource(TextConfig(source=f"tokens:{tmp_path / 't.npy'}", context_size=64), byte_tokenizer, 0, 1).take(1)
    (tmp_path / "t.pt").write_bytes(b"x")
    with pytest.raises(SaecircuitsError, match="pickle"):
        TextSource(TextConfig(source=f"tokens:{tmp_path / 't.pt'}"), byte_tokenizer, 0, 1).take(1)


def test_hf_dataset_path_streams_a_local_dataset(tmp_path, byte_tokenizer):
    """The hub code path (datasets.load_dataset, streaming) on a local parquet dataset folder."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "ds" / "data").mkdir(parents=True)
    pq.write_table(pa.table({"text": [f"hello {i} " * 10 for i in range(30)]}), tmp_path / "ds" / "data" / "train-0.parquet")
    cfg = TextConfig(source=f"hf:{tmp_path / 'ds'}", context_size=16, eval_fraction=0)
    got = TextSource(cfg, byte_tokenizer, 0, 1).take(8)
    assert got.shape == (8, 16)


def test_hf_dataset_offline_is_clear(monkeypatch, byte_tokenizer):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    cfg = TextConfig(source="hf:someone/not-a-cached-dataset")
    with pytest.raises(SaecircuitsError, match="cannot open Hugging Face dataset 'someone/not-a-cached-dataset'"):
        TextSource(cfg, byte_tokenizer, 0, 1).take(1)


@pytest.mark.parametrize("source", ["stdlib", "bible"])
def test_builtin_sources(source, byte_tokenizer):
    src = TextSource(TextConfig(source=source, context_size=64), byte_tokenizer, 0, 1)
    got = src.take(16)
    assert got.shape == (16, 64) and (got[:, 0] == 0).all()
    held = src.take(4, "eval")
    assert not any(torch.equal(h, g) for h in held for g in got)


def test_eval_split_needs_fraction(byte_tokenizer):
    with pytest.raises(SaecircuitsError, match="eval_fraction is 0"):
        TextSource(TextConfig(eval_fraction=0), byte_tokenizer, 0, 1).take(1, "eval")

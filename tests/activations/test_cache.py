import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from saecircuits.activations.cache import ActivationCache, build_cache
from saecircuits.activations.store import ActivationStore, StoreConfig
from saecircuits.core.errors import SaecircuitsError
from saecircuits.text.config import TextConfig
from saecircuits.text.source import TextSource

from conftest import make_tiny_model

SITES = ["blocks.1.hook_resid_post", "blocks.0.attn.hook_z:*"]


def _text(tok):
    return TextSource(TextConfig(source="bible", context_size=24, eval_fraction=0), tok, tok.bos_token_id, tok.eos_token_id)


def test_cache_round_trip_equals_model_store(tmp_path, tiny_model, byte_tokenizer):
    cfg = StoreConfig(batch_size_tokens=60, buffer_tokens=24 * 10, model_batch_size=3)
    cache = build_cache(tmp_path / "c", tiny_model, SITES, _text(byte_tokenizer), cfg, n_tokens=24 * 70, shard_contexts=7, progress=False)
    assert cache.manifest["complete"] and cache.n_contexts == 70 and len(cache.shards) == 10
    from_model = list(ActivationStore.from_model(tiny_model, SITES, _text(byte_tokenizer), cfg).batches(max_tokens=60 * 20))
    from_cache = list(cache.store(cfg).batches(max_tokens=60 * 20))
    assert len(from_model) == len(from_cache) == 20
    for a, b in zip(from_model, from_cache):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a second build with the same settings reuses the cache
    again = build_cache(tmp_path / "c", tiny_model, SITES, _text(byte_tokenizer), cfg, n_tokens=24 * 70, shard_contexts=7, progress=False)
    assert again.manifest["shards"] == cache.manifest["shards"]


def test_subset_of_sites_and_several_readers(tmp_path, tiny_model, byte_tokenizer):
    cfg = StoreConfig(batch_size_tokens=60, buffer_tokens=24 * 10)
    build_cache(tmp_path / "c", tiny_model, SITES, _text(byte_tokenizer), cfg, n_tokens=24 * 30, progress=False)
    readers = [ActivationCache(tmp_path / "c").store(cfg, ["blocks.0.attn.hook_z:2"], repeat=False) for _ in range(2)]
    a, b = (list(r.batches()) for r in readers)
    assert list(a[0]) == ["blocks.0.attn.hook_z:2"] and all(torch.equal(x["blocks.0.attn.hook_z:2"], y["blocks.0.attn.hook_z:2"]) for x, y in zip(a, b))


WRITER = """
import sys, time
sys.path.insert(0, {tests!r})
from conftest import make_tiny_model, make_byte_tokenizer
from saecircuits.activations.cache import build_cache
from saecircuits.activations.store import StoreConfig, ModelActivations
from saecircuits.text.config import TextConfig
from saecircuits.text.source import TextSource
tok = make_byte_tokenizer()
model = make_tiny_model(tokenizer=tok)
slow = ModelActivations.rows
def rows(self, tokens):
    time.sleep(0.05)
    return slow(self, tokens)
ModelActivations.rows = rows
text = TextSource(TextConfig(source="bible", context_size=24, eval_fraction=0), tok, tok.bos_token_id, tok.eos_token_id)
build_cache({out!r}, model, {sites!r}, text, StoreConfig(model_batch_size=2), n_tokens=24 * 200, shard_contexts=10, progress=False)
"""


def test_cache_survives_kill_during_writing(tmp_path, byte_tokenizer):
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", WRITER.format(tests=str(Path(__file__).parents[1]), out=str(out), sites=SITES)])
    deadline = time.time() + 120
    while time.time() < deadline:
        m = out / "manifest.json"
        if m.exists() and len(json.loads(m.read_text())["shards"]) >= 3:
            break
        time.sleep(0.05)
    proc.kill()  # SIGKILL, mid-shard
    proc.wait()
    done = json.loads((out / "manifest.json").read_text())
    assert 3 <= len(done["shards"]) < 20 and not done["complete"]
    model = make_tiny_model(tokenizer=byte_tokenizer)
    cfg = StoreConfig(model_batch_size=2)
    resumed = build_cache(out, model, SITES, _text(byte_tokenizer), cfg, n_tokens=24 * 200, shard_contexts=10, progress=False)
    reference = build_cache(tmp_path / "ref", model, SITES, _text(byte_tokenizer), cfg, n_tokens=24 * 200, shard_contexts=10, progress=False)
    assert resumed.manifest["shards"] == reference.manifest["shards"]
    for s in reference.shards:
        a, b = load_file(out / s["file"]), load_file(tmp_path / "ref" / s["file"])
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not list(out.glob(".shard_*"))  # the half-written shard was cleaned away


def test_cache_for_another_model_is_refused(tmp_path, tiny_model, byte_tokenizer):
    cfg = StoreConfig()
    build_cache(tmp_path / "c", tiny_model, SITES, _text(byte_tokenizer), cfg, n_tokens=24 * 10, progress=False)
    other = make_tiny_model(seed=1, tokenizer=byte_tokenizer)
    with pytest.raises(SaecircuitsError, match="made for another model"):
        build_cache(tmp_path / "c", other, SITES, _text(byte_tokenizer), cfg, n_tokens=24 * 10, progress=False)
    with pytest.raises(SaecircuitsError, match="was made for tiny-3l"):
        ActivationCache(tmp_path / "c").check(model=make_tiny_model(n_layers=2, tokenizer=byte_tokenizer))
    with pytest.raises(SaecircuitsError, match="has no site blocks.2.hook_resid_post"):
        ActivationCache(tmp_path / "c").store(cfg, ["blocks.2.hook_resid_post"])


def test_corrupt_shard_is_one_clear_error(tmp_path, tiny_model, byte_tokenizer):
    cfg = StoreConfig(batch_size_tokens=20)
    cache = build_cache(tmp_path / "c", tiny_model, SITES, _text(byte_tokenizer), cfg, n_tokens=24 * 20, shard_contexts=5, progress=False)
    shard = tmp_path / "c" / cache.shards[1]["file"]
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(SaecircuitsError, match="shard_00001.safetensors .*corrupt"):
        list(ActivationCache(tmp_path / "c").store(cfg, repeat=False).batches())
    (tmp_path / "c" / "manifest.json").write_text("{")
    with pytest.raises(SaecircuitsError, match="not valid JSON"):
        ActivationCache(tmp_path / "c")

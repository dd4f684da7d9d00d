import pytest
import torch

from saecircuits.activations.store import ActivationStore
from saecircuits.core.config import validate
from saecircuits.core.errors import SaecircuitsError
from saecircuits.core.files import plain_json, read_json, write_json
from saecircuits.text.source import TextSource
from saecircuits.training.config import TrainConfig
from saecircuits.training.run import train
from saecircuits.training.schedule import geometric_median, lr_factor
from saecircuits.training.summary import TrainingSummary, read_summary
from saecircuits.training.trainer import Trainer

SITE = "blocks.1.hook_resid_post"


def _cfg(tmp_path, **kw):
    data = {
        "model": "tiny",
        "text": {"source": "bible", "context_size": 32, "eval_fraction": 0.05},
        "store": {"batch_size_tokens": 256, "buffer_tokens": 32 * 32, "model_batch_size": 8, "normalize": "expected_average_only_in"},
        "saes": [{"architecture": "topk", "hook": SITE, "d_sae": 128, "k": 8, "lr": 3e-3}],
        "total_tokens": 256 * 60,
        "eval": {"contexts": 16, "batch_contexts": 8},
        "wandb": {"mode": "off"},
        "out": str(tmp_path / "run"),
    }
    for k, v in kw.items():
        data[k] = v
    return validate(TrainConfig, data)


def _trainer(cfg, model, out=None):
    text = TextSource.for_model(cfg.text, model)
    store = ActivationStore.from_model(model, [s.hook for s in cfg.saes] + [s.hook_out for s in cfg.saes if s.hook_out], text, cfg.store)
    return Trainer(cfg, model, store, out or cfg.out, text, progress=False)


def test_training_beats_mean_predictor(tmp_path, tiny_model):
    cfg = _cfg(tmp_path, saes=[
        {"architecture": "topk", "hook": SITE, "d_sae": 128, "k": 8, "lr": 3e-3},
        {"architecture": "batchtopk", "hook": SITE, "d_sae": 128, "k": 8, "lr": 3e-3},
        {"architecture": "standard", "hook": SITE, "d_sae": 128, "lr": 3e-3, "l1_coefficient": 0.5},
        {"architecture": "jumprelu", "hook": SITE, "d_sae": 128, "lr": 3e-3, "l0_coefficient": 0.05},
        {"architecture": "matryoshka_batchtopk", "hook": SITE, "d_sae": 128, "k": 8, "lr": 3e-3, "matryoshka_widths": [16, 64, 128]},
        {"architecture": "batchtopk", "hook": "blocks.1.ln2.hook_normalized", "hook_out": "blocks.1.hook_mlp_out", "skip": True, "d_sae": 128, "k": 8, "lr": 3e-3},
    ])
    summary = train(cfg, model=tiny_model, progress=False)
    for name, r in summary["saes"].items():
        # the mean predictor explains 0 of the variance; every SAE must do far better on held-out text
        assert r["explained_variance"] > 0.6, (name, r["explained_variance"])
        # splicing the SAE in hurts the model's loss far less than zero-ablating the site
        assert abs(r["ce_with_sae"] - r["ce_clean"]) < 0.5 * abs(r["ce_zero_ablation"] - r["ce_clean"]), name
    topk = next(r for n, r in summary["saes"].items() if n.startswith(SITE.replace(":", "_h") + "-topk"))
    assert abs(topk["l0"] - 8) < 1e-6
    assert (tmp_path / "run" / "saes").is_dir() and len(list((tmp_path / "run" / "saes").iterdir())) == 6


def test_resume_equals_uninterrupted(tmp_path, tiny_model):
    kw = {"checkpoint_every_tokens": 256 * 7, "total_tokens": 256 * 30,
          "saes": [{"architecture": "topk", "hook": SITE, "d_sae": 64, "k": 4, "dead_after_tokens": 512},
                   {"architecture": "batchtopk", "hook": "blocks.0.attn.hook_z:1", "d_sae": 32, "k": 2}]}
    full = _trainer(_cfg(tmp_path, **kw), tiny_model, tmp_path / "full")
    full.fit()
    part = _trainer(_cfg(tmp_path, **kw), tiny_model, tmp_path / "part")

    class Killed(Exception):
        pass

    step = part.train_step

    def dying(batch):
        if part.step == 17:  # dies after the checkpoint at step 14, mid-window
            raise Killed
        return step(batch)

    part.train_step = dying
    with pytest.raises(Killed):
        part.fit()
    resumed = _trainer(_cfg(tmp_path, **kw), tiny_model, tmp_path / "part")
    resumed.fit(resume=True)
    assert resumed.step == full.step == 30
    for a, b in zip(full.saes, resumed.saes):
        for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert torch.equal(va, vb), k


def test_same_seed_same_weights_and_config_mismatch_refused(tmp_path, tiny_model):
    kw = {"total_tokens": 256 * 5}
    a = _trainer(_cfg(tmp_path, **kw), tiny_model, tmp_path / "a")
    b = _trainer(_cfg(tmp_path, **kw), tiny_model, tmp_path / "b")
    a.fit()
    b.fit()
    assert all(torch.equal(x, y) for x, y in zip(a.saes[0].parameters(), b.saes[0].parameters()))
    other = _trainer(_cfg(tmp_path, total_tokens=256 * 6), tiny_model, tmp_path / "a")
    with pytest.raises(SaecircuitsError, match="another config"):
        other.fit(resume=True)
    again = _trainer(_cfg(tmp_path, **kw), tiny_model, tmp_path / "a")
    with pytest.raises(SaecircuitsError, match="pass --resume"):
        again.fit()


def test_sweep_expansion_and_bad_configs(tmp_path):
    cfg = _cfg(tmp_path, saes=[{"architecture": "topk", "hook": SITE, "d_sae": 64, "sweep": {"k": [4, 8, 16, 32], "lr": [1e-3, 3e-3]}}])
    assert len(cfg.saes) == 8 and {(s.k, s.lr) for s in cfg.saes} == {(k, lr) for k in (4, 8, 16, 32) for lr in (1e-3, 3e-3)}
    with pytest.raises(SaecircuitsError, match="sweep over 'adam_betas' is not supported"):
        _cfg(tmp_path, saes=[{"hook": SITE, "sweep": {"adam_betas": [[0.9, 0.99]]}}])
    with pytest.raises(SaecircuitsError, match="same name"):
        _cfg(tmp_path, saes=[{"hook": SITE}, {"hook": SITE}])
    with pytest.raises(SaecircuitsError, match="unknown field 'store.bufer_tokens'"):
        _cfg(tmp_path, store={"bufer_tokens": 5})
    with pytest.raises(SaecircuitsError, match="field 'saes.0.architecture'"):
        _cfg(tmp_path, saes=[{"hook": SITE, "architecture": "relu"}])


def test_site_not_in_stream_is_clear(tmp_path, tiny_model):
    with pytest.raises(SaecircuitsError, match="has 3 layers"):
        _trainer(_cfg(tmp_path, saes=[{"hook": "blocks.5.hook_resid_post"}]), tiny_model)


def test_wandb_offline_run_folder(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = _cfg(tmp_path, total_tokens=256 * 12, wandb={"mode": "auto", "project": "t"})
    summary = train(cfg, model=tiny_model, progress=False)
    assert summary["wandb_mode"] == "offline" and summary["wandb_sync"].startswith("wandb sync ")
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    log = next(runs[0].glob("run-*.wandb")).read_bytes()
    name = cfg.saes[0].default_name()
    for key in (f"{name}/train/mse", f"{name}/eval/explained_variance", f"{name}/eval/ce_loss_recovered",
                f"{name}/eval/log10_feature_density", "saes-run"):
        assert key.encode() in log, key


def test_geometric_median_and_schedule():
    x = torch.cat([torch.zeros(50, 3), torch.full((3, 3), 100.0)])
    assert geometric_median(x).norm() < 1.0 < x.mean(0).norm()  # robust to the outliers, unlike the mean
    fs = [lr_factor(s, 100, 0.1, 0.2) for s in range(100)]
    assert fs[0] == pytest.approx(0.1) and fs[9] == 1.0 and fs[50] == 1.0 and fs[99] == pytest.approx(1 / 20)


def test_summary_json_round_trips_through_the_typed_summary(tmp_path, tiny_model):
    cfg = _cfg(tmp_path, total_tokens=256 * 4, saes=[
        {"architecture": "topk", "hook": SITE, "d_sae": 64, "k": 4},
        {"architecture": "batchtopk", "hook": "blocks.1.ln2.hook_normalized", "hook_out": "blocks.1.hook_mlp_out", "d_sae": 32, "k": 2},
    ])
    returned = train(cfg, model=tiny_model, progress=False)
    path = tmp_path / "run" / "summary.json"
    on_disk = read_json(path)
    assert plain_json(returned) == on_disk  # train returns what summary.json holds
    summary = read_summary(tmp_path / "run")
    assert summary.to_json() == on_disk and TrainingSummary.from_json(on_disk).to_json() == on_disk
    assert write_json(tmp_path / "again.json", summary.to_json()).read_bytes() == path.read_bytes()
    first = summary.saes[cfg.saes[0].default_name()]
    assert first.hook == SITE and first.splice is not None and first.explained_variance == on_disk["saes"][cfg.saes[0].default_name()]["explained_variance"]

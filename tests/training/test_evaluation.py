import torch

from saecircuits.sae import SAEConfig, build
from saecircuits.text.config import TextConfig
from saecircuits.text.source import TextSource
from saecircuits.training.evaluation import SAEUnderTest, evaluate


def _identity_sae(d, hook):
    """relu(x) - relu(-x) = x: a 'standard' SAE that reconstructs perfectly."""
    sae = build(SAEConfig(architecture="standard", hook=hook, d_sae=2 * d), d)
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.eval()


def test_perfect_and_zero_reconstructions(tiny_model, byte_tokenizer):
    tokens = TextSource(TextConfig(source="bible", context_size=32), byte_tokenizer, 0, 1).take(8, "eval")
    hook = "blocks.1.hook_resid_post"
    perfect = _identity_sae(32, hook)
    zero = _identity_sae(32, hook)
    with torch.no_grad():
        zero.W_dec.zero_()
    head = _identity_sae(8, "blocks.1.attn.hook_z:2")
    res = evaluate(tiny_model, [SAEUnderTest("perfect", perfect, 3.0, 3.0), SAEUnderTest("zero", zero),
                                SAEUnderTest("head", head)], tokens)
    p, z, h = res["perfect"], res["zero"], res["head"]
    assert abs(p["fvu"]) < 1e-9 and p["mse"] < 1e-9
    assert abs(p["ce_with_sae"] - p["ce_clean"]) < 1e-5 and abs(p["kl_to_clean"]) < 1e-6
    assert abs(p["ce_loss_recovered"] - 1) < 1e-4
    assert abs(z["ce_with_sae"] - z["ce_zero_ablation"]) < 1e-5 and abs(z["ce_loss_recovered"]) < 1e-4
    assert z["fvu"] >= 1
    assert abs(h["ce_loss_recovered"] - 1) < 1e-4 and h["tokens"] == p["tokens"] == 8 * 31

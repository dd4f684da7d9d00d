"""Tasks: prompts tokenize as intended (single-token answers, aligned clean/corrupted pairs), metrics
equal direct computations, seeded generation, and a task the model cannot do is flagged, not fatal."""

from __future__ import annotations

import pytest
import torch

from saecircuits.circuits import prompts, tasks
from saecircuits.circuits.task import GreaterThanTask, Task
from saecircuits.core.errors import SaecircuitsError

BYTES = range(3, 259)  # the byte tokenizer's non-special ids


def test_induction_prompts_repeat_and_corrupt_only_the_first_copy(tiny_model):
    with_bos = prompts.induction(tiny_model, n=8, half=6, vocab=BYTES, seed=1)
    assert (with_bos.clean[:, 0] == tiny_model.tokenizer.bos_token_id).all()
    t = prompts.induction(tiny_model, n=8, half=6, vocab=BYTES, seed=1, bos=False)
    assert t.clean.shape == t.corrupted.shape == (8, 11)
    assert torch.equal(t.clean, with_bos.clean[:, 1:])
    first, second = t.clean[:, :6], t.clean[:, 6:]
    assert torch.equal(first[:, :5], second)  # x1..x5 repeated
    assert torch.equal(t.answers, first[:, 5])  # predict x6
    assert torch.equal(t.corrupted[:, 6:], second)  # the query copy is unchanged
    assert not (t.corrupted[:, :6] == first).all(1).any()  # the first copy is fresh
    assert torch.equal(t.wrong[:, 0], t.corrupted[:, 5])
    for row in t.clean[:, :6]:  # tokens are distinct within a copy, so induction is unambiguous
        assert len(set(row.tolist())) == 6


def test_generation_is_seeded(tiny_model):
    a = prompts.induction(tiny_model, n=4, half=5, vocab=BYTES, seed=3)
    b = prompts.induction(tiny_model, n=4, half=5, vocab=BYTES, seed=3)
    c = prompts.induction(tiny_model, n=4, half=5, vocab=BYTES, seed=4)
    assert torch.equal(a.clean, b.clean) and not torch.equal(a.clean, c.clean)


def test_word_tasks_refuse_a_tokenizer_that_splits_the_words(tiny_model):
    # the byte tokenizer writes " Mary" as five tokens: no single-token names exist
    with pytest.raises(SaecircuitsError, match="single tokens"):
        prompts.ioi(tiny_model, n=4)
    with pytest.raises(SaecircuitsError, match="unknown task"):
        tasks.build("nope", tiny_model)


def test_a_task_the_model_cannot_do_is_flagged(tiny_model):
    t = prompts.induction(tiny_model, n=32, half=6, vocab=BYTES)
    r = tasks.evaluate(tiny_model, t)  # a random model has no induction heads
    assert r["can_do"] is False and "cannot do induction" in r["warning"]
    assert abs(r["clean_accuracy"] - 0.5) < 0.3


def test_logit_diff_and_accuracy_equal_a_direct_computation():
    logits = torch.randn(5, 1, 20)
    t = Task("x", torch.zeros(5, 3, dtype=torch.long), torch.zeros(5, 3, dtype=torch.long),
                   torch.tensor([1, 2, 3, 4, 5]), torch.tensor([[6, 7], [8, 9], [1, 3], [0, 2], [9, 9]]))
    for i in range(5):
        lg = logits[i, 0]
        assert t.metric(logits)[i] == pytest.approx(float(lg[t.answers[i]] - lg[t.wrong[i]].mean()))
        assert bool(t.correct(logits)[i]) == bool(lg[t.answers[i]] > lg[t.wrong[i]].max())


@pytest.mark.parametrize("digit_tokens", [True, False])
def test_greater_than_metric_equals_brute_force(digit_tokens):
    g = torch.Generator().manual_seed(0)
    n, vocab = 6, 130
    yy = torch.tensor([2, 17, 40, 55, 90, 98])
    ids = torch.arange(10, 20) if digit_tokens else torch.arange(20, 120)
    logits = torch.randn(n, 2 if digit_tokens else 1, vocab, generator=g)
    t = GreaterThanTask("gt", torch.zeros(n, 4, dtype=torch.long), torch.zeros(n, 4, dtype=torch.long),
                              torch.zeros(n, dtype=torch.long), torch.zeros(n, 1, dtype=torch.long),
                              positions=(-2, -1) if digit_tokens else (-1,), threshold=yy, digit_ids=ids)
    got = t.metric(logits)
    for i in range(n):
        if digit_tokens:  # P(year) for years with the tie digit, the tens digit alone otherwise
            p1, p2 = logits[i, 0].softmax(-1)[ids], logits[i, 1].softmax(-1)[ids]
            d1, d2 = int(yy[i]) // 10, int(yy[i]) % 10
            greater = sum(float(p1[a]) for a in range(10) if a > d1) + float(p1[d1]) * sum(float(p2[b]) for b in range(10) if b > d2)
            other = sum(float(p1[a]) for a in range(10) if a < d1) + float(p1[d1]) * sum(float(p2[b]) for b in range(10) if b <= d2)
        else:
            p = logits[i, 0].softmax(-1)[ids]
            greater = sum(float(p[y]) for y in range(100) if y > yy[i])
            other = sum(float(p[y]) for y in range(100) if y <= yy[i])
        assert float(got[i]) == pytest.approx(greater - other, abs=1e-5)


# --- the real default model ----------------------------------------------------------------------

@pytest.mark.real_model
def test_text_tasks_tokenize_as_intended_on_smollm2(smollm2):
    for name in ("ioi", "greater_than", "list_recall", "colored_objects"):
        t = tasks.build(name, smollm2, n=12, seed=0)
        assert t.clean.shape == t.corrupted.shape and len(t) == 12
        assert (t.clean[:, 0] == smollm2.tokenizer.bos_token_id).all()
        diff = (t.clean != t.corrupted).sum(1)
        assert (diff >= 1).all()
        if name != "greater_than":
            for i in range(len(t)):  # the answer and the competitors are tokens of the prompt itself
                row = set(t.clean[i].tolist())
                assert int(t.answers[i]) in row and set(t.wrong[i].tolist()) <= row
                word = smollm2.to_string(t.answers[i: i + 1])  # the answer word re-tokenizes to that one token
                assert smollm2.to_tokens(word, prepend_bos=False)[0].tolist() == [int(t.answers[i])]
    ioi = prompts.ioi(smollm2, n=12)
    assert ((ioi.clean != ioi.corrupted).sum(1) == 1).all()  # ABC: only the second subject changes
    for i in range(len(ioi)):
        row = ioi.clean[i].tolist()
        assert row.count(int(ioi.answers[i])) == 1 and row.count(int(ioi.wrong[i, 0])) == 2
        assert int(ioi.corrupted[i][ioi.clean[i] != ioi.corrupted[i]]) not in row  # a third name
    assert smollm2.to_string(ioi.clean[0, 1:]) == ioi.info["examples"][0]


@pytest.mark.real_model
def test_smollm2_does_ioi(smollm2):
    t = prompts.ioi(smollm2, n=24, seed=0)
    r = tasks.evaluate(smollm2, t)
    assert r["can_do"] and r["share_metric_positive"] > 0.8 and r["clean_metric"] > r["corrupted_metric"] + 1
    logits = tasks.task_logits(smollm2, smollm2.to_tokens("When Mary and John went to the store, John gave a drink to"), (-1,))
    assert logits[0, 0, smollm2.to_single_token(" Mary")] > logits[0, 0, smollm2.to_single_token(" John")]


@pytest.mark.real_model
def test_greater_than_positions_read_the_right_conditionals(smollm2):
    t = prompts.greater_than(smollm2, n=3, seed=0)
    assert t.positions == (-2, -1) and t.info["digits"] == "one token a digit"
    got = t.metric(tasks.task_logits(smollm2, t.clean, t.positions))
    ids = t.digit_ids
    for i in range(len(t)):  # P(tens digit) from the prompt without the appended digit, P(units) with it
        p1 = smollm2(t.clean[i: i + 1, :-1])[0, -1].softmax(-1)[ids]
        p2 = smollm2(t.clean[i: i + 1])[0, -1].softmax(-1)[ids]
        d1, d2 = int(t.threshold[i]) // 10, int(t.threshold[i]) % 10
        want = float(p1[d1 + 1:].sum() - p1[:d1].sum() + p1[d1] * (p2[d2 + 1:].sum() - p2[: d2 + 1].sum()))
        assert float(got[i]) == pytest.approx(want, abs=1e-4)


@pytest.mark.real_model
def test_list_recall_sweep_reports_each_size_position_and_order(smollm2):
    rows = tasks.list_recall_sweep(smollm2, sizes=(2, 3), n=4)
    assert len(rows) == 2 * (2 + 3)
    assert {(r["n_items"], r["answer_index"], r["reorder"]) for r in rows} == {
        (n, k, o) for n in (2, 3) for k in range(n) for o in (False, True)}
    assert all(0 <= r["clean_accuracy"] <= 1 and r["chance"] == pytest.approx(1 / r["n_items"]) for r in rows)
    one = tasks.evaluate(smollm2, prompts.list_recall(smollm2, n=4, n_items=3, answer_index=1, reorder=True))
    row = next(r for r in rows if (r["n_items"], r["answer_index"], r["reorder"]) == (3, 1, True))
    assert row["clean_metric"] == pytest.approx(one["clean_metric"], abs=1e-4)  # the batched sweep slices right
    t = prompts.list_recall(smollm2, n=4, n_items=4, answer_index=0, reorder=False)
    for row, ans, wrong in zip(t.clean, t.answers, t.wrong):
        ids = row.tolist()
        assert ids.index(int(ans)) < min(ids.index(int(w)) for w in wrong)  # the answer stands first in the list

"""Held-out splits: train / val / test share no name (IOI) or start year (greater-than), checked on the
prompts' tokens; test holds a template train lacks; each counterfactual differs from its prompt only at
the name / YY tokens; answers are right; the seed decides the splits; impossible sizes are one error."""

from __future__ import annotations

import re

import pytest
import torch

from saecircuits.circuits import prompts
from saecircuits.circuits.splits import SPLITS, YEAR_TEMPLATE_TEST, build_splits, deal
from saecircuits.core.errors import SaecircuitsError

SIZES = {"n_train": 24, "n_val": 12, "n_test": 36}


def template_of(text: str, templates: list[str], **fields: str) -> str:
    """The one template a prompt was written from: its fields match words or digits (a field named twice,
    the same one twice), and those given in ``fields`` (e.g. ``A``, the indirect object) those values."""
    found = []
    for t in templates:
        pattern, named = re.escape(t), set()
        for field in re.findall(r"\{(\w+)\}", t):
            group = f"(?P={field})" if field in named else f"(?P<{field}>\\w+)"
            pattern = pattern.replace(re.escape("{" + field + "}"), group, 1)
            named.add(field)
        m = re.fullmatch(pattern, text)
        if m and all(m.group(k) == v for k, v in fields.items()):
            found.append(t)
    assert len(found) == 1, (text, found)
    return found[0]


# --- without the real model ---------------------------------------------------------------------

def test_only_ioi_greater_than_and_induction_have_splits_and_sizes_must_be_positive():
    with pytest.raises(SaecircuitsError, match=r"task list_recall has no held-out .* \(tasks with splits: ioi, greater_than, induction\)"):
        build_splits("list_recall", None, 4, 4, 4)
    with pytest.raises(SaecircuitsError, match="unknown task 'nope'"):
        build_splits("nope", None, 4, 4, 4)
    with pytest.raises(SaecircuitsError, match="ioi: the val split needs at least 1 prompt, got 0"):
        build_splits("IOI", None, 4, 0, 4)


def test_deal_is_disjoint_complete_and_seeded():
    parts = deal(list(range(97)), seed=0, task="x")
    assert sorted(sum(parts.values(), [])) == list(range(97))
    assert sorted(len(p) for p in parts.values()) == [32, 32, 33]
    assert parts == deal(list(range(97)), seed=0, task="x") and parts != deal(list(range(97)), seed=1, task="x")


def test_word_tasks_refuse_a_tokenizer_that_splits_the_words(tiny_model):
    # the byte tokenizer writes every name and noun as several tokens
    with pytest.raises(SaecircuitsError, match="candidate names are single tokens"):
        build_splits("ioi", tiny_model, 4, 4, 4)
    with pytest.raises(SaecircuitsError, match="candidate year nouns are single tokens"):
        build_splits("greater_than", tiny_model, 4, 4, 4)


def test_word_tasks_say_how_to_give_your_own_words(tiny_model):
    with pytest.raises(SaecircuitsError, match=r"--words FILE \(YAML or JSON: names: \[\.\.\.\]\)"):
        build_splits("ioi", tiny_model, 4, 4, 4)
    with pytest.raises(SaecircuitsError, match="unknown word list.*colours"):
        build_splits("ioi", tiny_model, 4, 4, 4, words={"colours": ("red",)})


# --- the real default model ----------------------------------------------------------------------


@pytest.mark.real_model
def test_ioi_splits_draw_only_the_names_a_user_gives(smollm2):
    mine = tuple(sorted(prompts.single_token_words(smollm2, prompts.NAMES))[-18:]) + ("Zyxwvutsrq",)
    splits = build_splits("ioi", smollm2, 4, 4, 8, seed=0, words={"names": mine})
    drawn = set().union(*(set(p.pool) for p in splits.parts.values()))
    assert drawn <= set(mine[:-1]) and len(drawn) >= 15  # the multi-token name is left out
    ids = {smollm2.to_single_token(" " + n) for n in mine[:-1]}
    for task in splits.tasks().values():
        assert set(task.answers.tolist()) <= ids

@pytest.fixture(scope="module")
def ioi_splits(smollm2):
    return build_splits("ioi", smollm2, **SIZES, seed=0)


@pytest.fixture(scope="module")
def year_splits(smollm2):
    return build_splits("greater_than", smollm2, **SIZES, seed=0)


@pytest.mark.real_model
def test_ioi_splits_have_disjoint_names_and_aligned_abc_counterfactuals(smollm2, ioi_splits):
    name_ids = set(prompts.single_token_words(smollm2, prompts.NAMES).values())
    seen = {}
    for split, task in ioi_splits.tasks().items():
        assert len(task) == SIZES[f"n_{split}"] and task.clean.shape == task.corrupted.shape
        assert (task.clean[:, 0] == smollm2.tokenizer.bos_token_id).all()
        used = set()
        for clean, corr, io, s in zip(task.clean.tolist(), task.corrupted.tolist(), task.answers.tolist(),
                                      task.wrong[:, 0].tolist()):
            where = [i for i, tok in enumerate(clean) if tok in name_ids]  # the name positions, from the tokens
            assert where == [i for i in range(len(clean)) if clean[i] != corr[i]]  # only the names differ
            assert sorted(clean[i] for i in where) == sorted([io, s, s])  # IO once, the subject twice
            assert clean[where[-1]] == s  # the subject's second mention stands last
            new = [corr[i] for i in where]
            assert len(set(new)) == 3 and not set(new) & {io, s} and set(new) <= name_ids  # ABC, both replaced
            assert not [tok for i, tok in enumerate(corr) if tok in name_ids and i not in where]
            used |= set(clean) | set(corr)
        seen[split] = used & name_ids
        pool = {smollm2.to_single_token(" " + n) for n in ioi_splits.parts[split].pool}
        assert seen[split] <= pool  # the bookkeeping says which names the split drew from
    assert not seen["train"] & seen["val"] and not seen["train"] & seen["test"] and not seen["val"] & seen["test"]


@pytest.mark.real_model
def test_ioi_test_holds_a_template_train_and_val_lack(smollm2, ioi_splits):
    held = set(ioi_splits.held_out)
    assert held and held <= set(prompts.IOI_TEMPLATES)
    for split, task in ioi_splits.tasks().items():
        used = {template_of(smollm2.to_string(row[1:]), prompts.IOI_TEMPLATES, A=smollm2.to_string(io).strip())
                for row, io in zip(task.clean, task.answers[:, None])}
        assert tuple(t for t in prompts.IOI_TEMPLATES if t in used) == ioi_splits.parts[split].templates
        if split == "test":
            assert held <= used and used - held  # the held-out templates and train's
        else:
            assert not used & held
    assert set(ioi_splits.parts["train"].templates) < set(ioi_splits.parts["test"].templates)


@pytest.mark.real_model
def test_greater_than_splits_have_disjoint_years_and_change_only_yy(smollm2, year_splits):
    digit = {d: smollm2.to_single_token(str(d)) for d in range(10)}
    year = smollm2.to_single_token(" year")
    seen = {}
    for split, task in year_splits.tasks().items():
        assert len(task) == SIZES[f"n_{split}"] and task.positions == (-2, -1)
        assert torch.equal(task.wrong, task.digit_ids[None].expand(len(task), -1))
        yys = set()
        for clean, corr, yy, ans in zip(task.clean.tolist(), task.corrupted.tolist(), task.threshold.tolist(),
                                        task.answers.tolist()):
            start = clean.index(year) + 2  # " year", " ", then the four digits of the start year
            assert clean[start + 2: start + 4] == [digit[yy // 10], digit[yy % 10]]  # YY, read from the tokens
            assert corr[start + 2: start + 4] == [digit[0], digit[1]]  # ... becomes 01
            assert corr[: start + 2] == clean[: start + 2] and corr[start + 4:] == clean[start + 4:]
            assert ans == digit[yy // 10] == clean[-1]  # the prompt ends with YY's tens digit
            assert 2 <= yy <= 98
            yys.add(yy)
        seen[split] = yys
        assert yys <= set(year_splits.parts[split].pool)
    assert not seen["train"] & seen["val"] and not seen["train"] & seen["test"] and not seen["val"] & seen["test"]


@pytest.mark.real_model
def test_greater_than_test_holds_the_second_phrasing_only(smollm2, year_splits):
    templates = [prompts.YEAR_TEMPLATE, YEAR_TEMPLATE_TEST]
    assert year_splits.held_out == (YEAR_TEMPLATE_TEST,)
    for split, task in year_splits.tasks().items():
        used = {template_of(smollm2.to_string(row[1:]), templates) for row in task.clean}
        assert used == ({prompts.YEAR_TEMPLATE, YEAR_TEMPLATE_TEST} if split == "test" else {prompts.YEAR_TEMPLATE})
        assert tuple(t for t in templates if t in used) == year_splits.parts[split].templates


@pytest.mark.real_model
@pytest.mark.parametrize("name", ["ioi", "greater_than"])
def test_the_seed_decides_the_splits(smollm2, name):
    small = {"n_train": 6, "n_val": 4, "n_test": 8}
    a, b = build_splits(name, smollm2, **small, seed=1), build_splits(name, smollm2, **small, seed=1)
    c = build_splits(name, smollm2, **small, seed=2)
    for split in SPLITS:
        ta, tb, tc = a.tasks()[split], b.tasks()[split], c.tasks()[split]
        assert torch.equal(ta.clean, tb.clean) and torch.equal(ta.corrupted, tb.corrupted)
        assert a.parts[split] == b.parts[split] and a.parts[split].pool != c.parts[split].pool
        assert ta.clean.shape != tc.clean.shape or not torch.equal(ta.clean, tc.clean)
    # a split's prompts do not depend on the other splits' sizes
    d = build_splits(name, smollm2, n_train=9, n_val=5, n_test=8, seed=1)
    assert torch.equal(d.test.clean, a.test.clean)


@pytest.mark.real_model
def test_a_split_larger_than_its_names_or_years_allow_is_one_clear_error(smollm2):
    with pytest.raises(SaecircuitsError, match=r"ioi: the test split could build only \d+ distinct prompts, "
                                               r"10000000 were asked for \(\d+ names"):
        build_splits("ioi", smollm2, 4, 4, 10_000_000)
    with pytest.raises(SaecircuitsError, match=r"greater_than: the val split could build only 4032 distinct prompts, "
                                               r"5000 were asked for \(32 start years, 18 nouns, 7 centuries"):
        build_splits("greater_than", smollm2, 4, 5000, 4)


def test_induction_splits_draw_disjoint_tokens_and_test_holds_the_held_out_template(tiny_model):
    sp = build_splits("induction", tiny_model, 16, 8, 12, seed=3)
    bos = tiny_model.tokenizer.bos_token_id
    used = {s: set(t.clean.flatten().tolist()) - {bos} for s, t in sp.tasks().items()}
    assert not used["train"] & used["val"] and not used["train"] & used["test"] and not used["val"] & used["test"]
    assert sp.held_out == ("filler + shorter repeat",) and "filler + shorter repeat" in sp.parts["test"].templates
    assert "filler + shorter repeat" not in sp.parts["train"].templates
    for split, t in sp.tasks().items():
        assert t.clean.shape == t.corrupted.shape and t.clean.shape[1] == sp.train.clean.shape[1]
        for row, corr, answer in zip(t.clean.tolist(), t.corrupted.tolist(), t.answers.tolist()):
            last = row[-1]
            earlier = [i for i, tok in enumerate(row[:-1]) if tok == last]
            assert len(earlier) == 1 and row[earlier[0] + 1] == answer  # induction's answer, unambiguous
            assert answer not in corr  # the counterfactual's first copy is fresh
    # test: half its prompts copy from further along (two filler tokens first)
    starts = [row.index(row[-1]) for row in sp.test.clean.tolist()]
    assert len(set(starts)) == 2 and len(set(row.index(row[-1]) for row in sp.train.clean.tolist())) == 1

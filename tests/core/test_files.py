import stat

import pytest
import torch

from saecircuits.core import files
from saecircuits.core.errors import SaecircuitsError
from saecircuits.core.files import atomic_path, ensure_dir, read_json, staged_dir, write_json
from saecircuits.core.tensors import load_tensors, save_tensors


def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path):
    target = tmp_path / "a.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash while writing")
    assert read_json(target) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary file left behind


def test_safetensors_round_trip_and_shared_storage(tmp_path):
    w = torch.randn(4, 3)
    save_tensors(tmp_path / "w.safetensors", {"a": w, "b": w.T})  # b shares a's storage
    back = load_tensors(tmp_path / "w.safetensors")
    torch.testing.assert_close(back["a"], w)
    torch.testing.assert_close(back["b"], w.T)


def test_truncated_safetensors_is_one_clear_error(tmp_path):
    p = tmp_path / "w.safetensors"
    save_tensors(p, {"a": torch.randn(100, 100)})
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(SaecircuitsError, match="truncated or corrupt"):
        load_tensors(p)


@pytest.mark.parametrize("name", ["model.pt", "weights.pkl", "x.bin"])
def test_pickle_files_are_refused(tmp_path, name):
    p = tmp_path / name
    p.write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(SaecircuitsError, match="pickle"):
        load_tensors(p)


def test_output_folder_that_is_a_file(tmp_path):
    f = tmp_path / "out"
    f.write_text("x")
    with pytest.raises(SaecircuitsError, match="is a file"):
        ensure_dir(f)


def test_corrupt_json(tmp_path):
    p = tmp_path / "cfg.json"
    p.write_text("{not json")
    with pytest.raises(SaecircuitsError, match="not valid JSON"):
        read_json(p)


def test_written_files_get_the_usual_mode(tmp_path):
    p = write_json(tmp_path / "a.json", {"x": 1})
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~files._UMASK != 0o600


def test_staged_dir_swaps_in_whole_or_leaves_the_target_alone(tmp_path):
    target = tmp_path / "out"
    with staged_dir(target, ".out.") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.")
        (tmp / "a.txt").write_text("first")
    assert (target / "a.txt").read_text() == "first"
    for crash in (RuntimeError("crash while writing"), KeyboardInterrupt()):
        with pytest.raises(type(crash)), staged_dir(target, ".out.") as tmp:
            (tmp / "a.txt").write_text("half")
            raise crash
        assert (target / "a.txt").read_text() == "first"
        assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left behind
    with staged_dir(target, ".out.") as tmp:
        (tmp / "b.txt").write_text("second")
    assert [p.name for p in target.iterdir()] == ["b.txt"]  # replaced whole


def test_read_csv_rows_checks_the_file_and_its_header(tmp_path):
    from saecircuits.core.errors import SaecircuitsError
    from saecircuits.core.files import read_csv_rows

    good = tmp_path / "good.csv"
    good.write_text("prompt,answer\nThe capital of France is, Paris\n", encoding="utf-8")
    assert read_csv_rows(good, ("prompt", "answer")) == [{"prompt": "The capital of France is", "answer": " Paris"}]
    with pytest.raises(SaecircuitsError, match="prompt CSV .* does not exist"):
        read_csv_rows(tmp_path / "none.csv", ("prompt", "answer"), what="prompt CSV")
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("text,label\nx,y\n", encoding="utf-8")
    with pytest.raises(SaecircuitsError, match=r"needs a header with columns prompt and answer \(it has: text, label\)"):
        read_csv_rows(wrong, ("prompt", "answer"))
    latin = tmp_path / "latin.csv"
    latin.write_bytes("prompt,answer\ncaf\xe9,x\n".encode("latin-1"))
    with pytest.raises(SaecircuitsError, match="not a readable UTF-8 CSV"):
        read_csv_rows(latin, ("prompt", "answer"))

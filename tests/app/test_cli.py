import subprocess
import sys


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "saecircuits", *args], capture_output=True, text=True, env=env)


def test_help_lists_commands():
    out = run("--help")
    assert out.returncode == 0
    for cmd in ("models", "cache", "train", "demo"):
        assert cmd in out.stdout


def test_error_is_one_line_without_traceback():
    out = run("models", "--load", "no-such-model")
    assert out.returncode == 2
    assert "unknown model 'no-such-model'" in out.stderr
    assert "Traceback" not in out.stderr


def test_debug_shows_traceback():
    out = run("models", "--load", "no-such-model", "--debug")
    assert out.returncode != 0 and "Traceback" in out.stderr


def test_error_text_with_square_brackets_is_printed_as_is(tmp_path):
    """An error naming paths or lists ([...]) must not be read as console markup (it raised, or vanished)."""
    bad = tmp_path / "cfg[bold].yaml"
    bad.write_text("model: x\nsaes: [ {hook: a\n")
    out = run("train", str(bad))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "cfg[bold].yaml" in out.stderr.replace("\n", "")

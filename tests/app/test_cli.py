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


def _wrapped_interrupt_command(sig: int) -> str:
    """A command that meets ``sig`` inside a library which turns the interrupt into another error (as
    transformers does inside a lazy import)."""
    return f"""
import os, signal, typer
from saecircuits.app.command import command
app = typer.Typer()

@command(on=app, name="x")
def x() -> None:
    try:
        os.kill(os.getpid(), {int(sig)})
        signal.pause()
    except BaseException as e:
        raise ModuleNotFoundError("Could not import module 'BertForPreTraining'") from e

@app.command()
def y() -> None: ...

app()
"""


def test_an_interrupt_a_library_rewrapped_still_ends_as_an_interrupt():
    import signal

    for sig, code, word in ((signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")):
        out = subprocess.run([sys.executable, "-c", _wrapped_interrupt_command(sig), "x"], capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == code and word in out.stderr, out.stderr
        assert "internal error" not in out.stderr and "Traceback" not in out.stderr

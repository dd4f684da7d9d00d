"""The one ``saecircuits`` typer app and ``command``, which registers a command on it (or on a group)
so that an error prints as one line with exit status 2 (a traceback with --debug)."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from typer._click import exceptions as click_errors  # typer 0.29 carries its own click
from typer.core import TyperGroup

from saecircuits.core.errors import SaecircuitsError


class _OneLineErrors(TyperGroup):
    """The top-level group: a bad option value or an unknown option is one ``error:`` line and exit status 2,
    as every other refusal is (click would draw a usage box)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # noqa: ANN001
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click_errors.NoArgsIsHelpError as e:
            if e.ctx is not None:
                console.print(e.ctx.get_help(), highlight=False)
            sys.exit(2)
        except click_errors.ClickException as e:
            where = e.ctx.command_path if getattr(e, "ctx", None) else "saecircuits"
            console.print(f"[bold red]error:[/bold red] {escape(e.format_message())} (see {where} --help)",
                          highlight=False, soft_wrap=True)
            sys.exit(e.exit_code)
        except typer.Abort:
            console.print("[yellow]interrupted[/yellow]")
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    name="saecircuits",
    cls=_OneLineErrors,
    help="Train sparse autoencoders on language-model activations, match features, find and validate circuits.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)
_state = {"debug": False}


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks.")) -> None:
    _state["debug"] = debug or bool(os.environ.get("SAECIRCUITS_DEBUG"))


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's or ``kill``'s stop), raised where the command is, so it unwinds like Ctrl-C:
    staged output folders are removed and the previous output stays as it was."""


_received: list[int] = []  # the signals met while a command ran


def _raise_interrupt(signum: int, frame: Any) -> None:
    _received.append(signum)
    raise Terminated(f"signal {signum}") if signum == signal.SIGTERM else KeyboardInterrupt()


@contextlib.contextmanager
def _signals_as_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM raises ``Terminated`` and Ctrl-C ``KeyboardInterrupt``, and each is noted: a library
    that turns the interrupt into another error on its way up (transformers does, inside a lazy import) still ends
    the command as an interrupt. Main thread only: signal handlers live there."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    previous = {s: signal.signal(s, _raise_interrupt) for s in (signal.SIGTERM, signal.SIGINT)
                if s == signal.SIGTERM or signal.getsignal(s) is signal.default_int_handler}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _stopped(terminated: bool, resumes: bool) -> None:
    """End an interrupted command: one line saying whether a rerun resumes, exit 130 (Ctrl-C) or 143 (SIGTERM)."""
    console.print(f"[yellow]{'terminated' if terminated else 'interrupted'}[/yellow]; " +
                  ("finished work is kept, rerun to resume" if resumes else
                   "this command does not resume: rerun it from the start"))
    raise typer.Exit(143 if terminated else 130) from None


def command(fn: Callable[..., Any] | None = None, *, on: typer.Typer | None = None, name: str | None = None,
            resumes: bool = False) -> Any:
    """Register a command whose SaecircuitsErrors print as one line and exit with status 2.

    ``@command`` registers on the main app; ``@command(on=group, name="x")`` on a sub-app (``saecircuits GROUP x``).
    ``resumes``: a rerun continues from the command's checkpoints (said when it is interrupted)."""
    if fn is None:
        return functools.partial(command, on=on, name=name, resumes=resumes)

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            with _signals_as_interrupts():
                return fn(*args, **kwargs)
        except SaecircuitsError as e:
            if _state["debug"]:
                raise
            console.print(f"[bold red]error:[/bold red] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt as e:
            _stopped(isinstance(e, Terminated), resumes)
        except MemoryError:
            if _state["debug"]:
                raise
            console.print("[bold red]error:[/bold red] out of memory; lower the batch size or buffer size")
            raise typer.Exit(2) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as e:  # noqa: BLE001 - anything else is our bug: say so briefly
            if _received:  # an interrupt that a library turned into another error
                _stopped(_received[-1] == signal.SIGTERM, resumes)
            if _state["debug"]:
                raise
            console.print(
                f"[bold red]internal error:[/bold red] {type(e).__name__}: {escape(str(e))}\n"
                "rerun with --debug for the traceback and report it",
                highlight=False,
            )
            raise typer.Exit(1) from None

    return (on or app).command(name=name)(run)

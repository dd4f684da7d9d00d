"""The one ``saecircuits`` typer app and ``command``, which registers a command on it (or on a group)
so that an error prints as one line with exit status 2 (a traceback with --debug)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from saecircuits.core.errors import SaecircuitsError

app = typer.Typer(
    name="saecircuits",
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
            return fn(*args, **kwargs)
        except SaecircuitsError as e:
            if _state["debug"]:
                raise
            console.print(f"[bold red]error:[/bold red] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/yellow]; " + ("finished work is kept, rerun to resume" if resumes else
                                                              "this command does not resume: rerun it from the start"))
            raise typer.Exit(130) from None
        except MemoryError:
            if _state["debug"]:
                raise
            console.print("[bold red]error:[/bold red] out of memory; lower the batch size or buffer size")
            raise typer.Exit(2) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as e:  # noqa: BLE001 - anything else is our bug: say so briefly
            if _state["debug"]:
                raise
            console.print(
                f"[bold red]internal error:[/bold red] {type(e).__name__}: {escape(str(e))}\n"
                "rerun with --debug for the traceback and report it",
                highlight=False,
            )
            raise typer.Exit(1) from None

    return (on or app).command(name=name)(run)

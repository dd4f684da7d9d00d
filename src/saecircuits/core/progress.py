"""How the library tells a person what it is doing, on stderr (rich): the one progress bar of every long
stage (tokens done of a total, tokens/s, time left) and ``note``, one line about a slow step.

Nothing else in the library prints: results go back to the caller, and tables are drawn by ``app``.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn


class TokenBar:
    """``TokenBar("training", total, done)``; ``update(completed)`` or ``advance(n)``, then ``close()``.

    ``done`` tokens were finished before (a resumed run); the rate counts only this process's tokens.
    Disabled, every call does nothing.
    """

    def __init__(self, label: str, total: int, done: int = 0, enabled: bool = True, transient: bool = False):
        self.p = None
        self.enabled = enabled
        if not enabled:
            return
        self.p = Progress(TextColumn(label), BarColumn(), TextColumn("{task.completed:,}/{task.total:,} tokens"),
                          TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                          console=Console(stderr=True), transient=transient)
        self.task = self.p.add_task(label, total=total, completed=done, rate="", info="")
        self.start, self.first, self.completed = time.perf_counter(), done, done
        self.p.start()

    def update(self, completed: int, info: str | None = None) -> None:
        """``completed``: tokens done in all (this process and before it); ``info``: shown beside the rate."""
        if self.p is None:
            return
        self.completed = completed
        seconds = time.perf_counter() - self.start
        rate = f"{(completed - self.first) / seconds:,.0f} tok/s" if seconds > 0 and completed > self.first else ""
        self.p.update(self.task, completed=completed, rate=rate, **({"info": info} if info is not None else {}))

    def advance(self, n: int, info: str | None = None) -> None:
        if self.p is not None:
            self.update(self.completed + n, info)

    def close(self) -> None:
        if self.p is not None:
            self.p.stop()

    def __enter__(self) -> TokenBar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def note(text: str, dim: bool = True) -> None:
    """One line on stderr about what a slow step is doing (dim, unless ``dim=False``); ``text`` is shown as is."""
    Console(stderr=True).print(f"[dim]{escape(text)}[/dim]" if dim else escape(text))

"""The one error type users see: what was wrong and what to do about it."""

from __future__ import annotations


class SaecircuitsError(Exception):
    """A problem with the user's input or environment, reported as one clear line.

    The command line prints ``str(error)`` without a traceback (unless ``--debug``) and exits non-zero.
    ``hint`` says what to do; it is appended to the message.
    """

    def __init__(self, message: str, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(f"{message} ({hint})" if hint else message)

"""A refusal with a machine-readable code: what a command or a deployment answers."""

from __future__ import annotations


class Refused(Exception):  # noqa: N818 - reads as what happened
    """Something asked of the node was refused; `code` is machine-readable, the message
    says why. Raised by command handlers and the layers they call."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

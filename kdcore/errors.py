"""Errors a user can cause: each names the spec field at fault, so the CLI exits 2 and the API
answers 4xx with that field, instead of a traceback."""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input (spec, data or model file); `field` is the spec path at fault."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class Cancelled(Exception):
    """Raised inside the training loop at a batch boundary when a callback asks to stop."""

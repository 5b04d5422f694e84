"""loralab's exception types for input it cannot use.

Every message says what is wrong, what was expected and what to do about it. The three
input errors subclass `ValueError`, so callers that already catch `ValueError` keep
working; the command line turns any `LoralabError` into one line on stderr and exit code 2.

A message about config fields names them through ``fields``: the message is a template with one
``{}`` per field, filled with the field names (``lora.r``) for Python callers, and with the flags
(``--rank``) by the command line (`LoralabError.rendered`).
"""

from __future__ import annotations

from typing import Callable


class LoralabError(Exception):
    """Base of every error loralab raises on purpose (the CLI prints it without a traceback)."""

    def __init__(self, message: str = "", fields: tuple[str, ...] = ()):
        self.template, self.fields = message, tuple(fields)
        super().__init__(message.format(*self.fields) if self.fields else message)

    def rendered(self, name_of: Callable[[str], str]) -> str:
        """The message with each field named by ``name_of(field)`` (the CLI: its flag)."""
        return self.template.format(*map(name_of, self.fields)) if self.fields else str(self)


class AdapterError(LoralabError, ValueError):
    """Bad adapter input: a config, a file, a tensor or a target that cannot be used."""


class DataError(LoralabError, ValueError):
    """A dataset or model that cannot be loaded: a missing package, a bad file, a missing column."""


class ConfigError(LoralabError, ValueError):
    """A bad flag or config value, or a run directory that cannot be used as asked."""


class TrainingError(LoralabError, RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message says where the last good checkpoint is."""

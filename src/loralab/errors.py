"""loralab's exception types for input it cannot use.

Every message says what is wrong, what was expected and what to do about it. The three
input errors subclass `ValueError`, so callers that already catch `ValueError` keep
working; the command line turns any `LoralabError` into one line on stderr and exit code 2.
"""


class LoralabError(Exception):
    """Base of every error loralab raises on purpose (the CLI prints it without a traceback)."""


class AdapterError(LoralabError, ValueError):
    """Bad adapter input: a config, a file, a tensor or a target that cannot be used."""


class DataError(LoralabError, ValueError):
    """A dataset or model that cannot be loaded: a missing package, a bad file, a missing column."""


class ConfigError(LoralabError, ValueError):
    """A bad flag or config value, or a run directory that cannot be used as asked."""


class TrainingError(LoralabError, RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message says where the last good checkpoint is."""

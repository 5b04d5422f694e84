"""The one exception type loralab raises for bad input.

Every message says what is wrong, what was expected and what to do about it.
`AdapterError` subclasses `ValueError`, so callers that already catch
`ValueError` keep working.
"""


class AdapterError(ValueError):
    """Bad adapter input: a config, a file, a tensor or a target that cannot be used."""


class DataError(ValueError):
    """A dataset or model that cannot be loaded: a missing package, a bad file, a missing column."""


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message says where the last good checkpoint is."""

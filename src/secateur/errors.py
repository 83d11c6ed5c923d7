"""User-facing errors.

A :class:`SecateurError` is an *expected* mistake (a missing file, a bad value, an unknown
name). Its message is one line that says what is wrong and what to do; the CLI prints it and
exits with code 2, without a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class SecateurError(Exception):
    """An expected, user-facing error with a one-line message."""

    exit_code = 2


class ConfigError(SecateurError, ValueError):
    """An invalid argument or setting (negative epochs, lr <= 0, unknown option)."""


class UnknownNameError(ConfigError):
    """A registry name that does not exist; the message lists the valid choices."""


class DataError(SecateurError):
    """A dataset that cannot be found, downloaded, or parsed."""


class CheckpointError(SecateurError):
    """A checkpoint or run directory that is missing, incomplete or inconsistent."""


class UnsupportedModelError(SecateurError):
    """A model (or one of its ops) that an analysis cannot handle; the model is left unchanged."""


class ExportError(SecateurError):
    """A model that an export format cannot write faithfully (its check against PyTorch failed)."""

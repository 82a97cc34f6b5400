"""Exceptions that the command line reports as one clear message, without a traceback."""

from __future__ import annotations

__all__ = ["WrnlibError", "DataError", "ConfigError", "RunError", "StoreError"]


class WrnlibError(Exception):
    """An error caused by input or state the user can fix; its message says how."""


class DataError(WrnlibError):
    """A data root, archive or image that cannot be used."""


class ConfigError(WrnlibError, ValueError):
    """An invalid setting: unknown profile or run id, bad width, depth or ratio."""


class RunError(WrnlibError):
    """A run that cannot start or that failed: missing teacher, failed notebook, NaN loss."""


class StoreError(RunError, OSError):
    """A run store that cannot be written: full disk, read-only file system, missing permission.

    It is an OSError too, so code that tolerates a failed optional write (the
    data cache) keeps catching it. `errno` and `filename` are those of the
    underlying OSError; the message is the text given.
    """

    def __init__(self, message: str, code: int | None = None, filename: str | None = None) -> None:
        super().__init__(message)
        self.errno = code
        self.filename = filename

    def __str__(self) -> str:
        return str(self.args[0])

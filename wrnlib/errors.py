"""Exceptions that the command line reports as one clear message, without a traceback."""

from __future__ import annotations

__all__ = ["WrnlibError", "DataError", "ConfigError", "RunError"]


class WrnlibError(Exception):
    """An error caused by input or state the user can fix; its message says how."""


class DataError(WrnlibError):
    """A data root, archive or image that cannot be used."""


class ConfigError(WrnlibError, ValueError):
    """An invalid setting: unknown profile or run id, bad width, depth or ratio."""


class RunError(WrnlibError):
    """A run that cannot start or that failed: missing teacher, failed notebook, NaN loss."""

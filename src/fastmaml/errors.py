"""Exceptions with messages that name the problem and the fix.

Every error fastmaml raises on bad input derives from ``FastMAMLError`` so callers
(and the command line) can tell user mistakes from bugs.
"""


class FastMAMLError(Exception):
    """Base class of fastmaml's user-facing errors."""


class DataError(FastMAMLError, ValueError):
    """A data file, folder or tensor is missing, corrupt or of the wrong shape."""


class ConfigError(FastMAMLError, ValueError):
    """A configuration key or value is invalid."""


class CheckpointError(FastMAMLError):
    """A checkpoint file is missing, truncated or not a fastmaml checkpoint."""


class NonFiniteLossError(FastMAMLError, FloatingPointError):
    """Training produced a NaN or infinite loss."""

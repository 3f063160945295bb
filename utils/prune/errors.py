"""The pruning package's errors; each is a :class:`utils.errors.UserError`, so the prune scripts
report it as one sentence (exit 2) instead of a traceback."""
from __future__ import annotations

from utils.errors import UserError

__all__ = ["PruneError", "VerificationError", "OptionError"]


class PruneError(UserError, RuntimeError):
    """Masks, weights or settings that cannot be turned into a valid compact model."""


class VerificationError(PruneError):
    """The compact model does not reproduce the absorbed full-size model."""


class OptionError(UserError, ValueError):
    """A pruning option out of its range (the message names the command-line flag)."""

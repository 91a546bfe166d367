"""The project's own error types: problems with what a user gave (a config, a file, a folder).

Their message is one line that names the culprit (a config key, a path) and, where there is one, the fix.
The command-line tools catch :class:`UserError` and print that line (``maskdcpt.cli.tool_main``); anything
else is a bug and keeps its traceback. Each type also derives from the built-in error callers caught
before these types existed (``ValueError``, ``FileNotFoundError``), so ``except ValueError`` still works.
"""
from __future__ import annotations

__all__ = ["UserError", "ConfigError", "DataError", "CheckpointError", "MissingFileError"]


class UserError(Exception):
    """A problem the user can fix; ``str(err)`` says what and how."""


class ConfigError(UserError, ValueError):
    """A config value, key or file that cannot be used (named by its dotted key or file)."""


class DataError(UserError, ValueError):
    """Input data that cannot be used: a corpus, an index, an image folder."""


class CheckpointError(UserError, ValueError):
    """A weight or training-state file that cannot be used for what was asked."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist."""

"""The one error type for mistakes a user can fix.

A :class:`UserError` is bad input - a config value, a data file, a missing artifact, a
flag - and its message says what to fix. The ``lavic`` command and the ``jobs/`` entry
points print it as one line and exit with status 2; any other exception is a bug (or an
environment failure) and keeps its traceback.

The subclasses also derive from the builtin a caller would catch for the same condition
(``ValueError``, ``FileNotFoundError``), so library users need not know this module.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input the user can fix; the message says what and how."""


class InvalidInput(UserError, ValueError):
    """A value, file content or combination of settings that cannot work."""


class InputMissing(UserError, FileNotFoundError):
    """A file, directory or artifact that a step reads is not there (the message names what makes it)."""


class OutputExists(UserError, FileExistsError):
    """An output location holds something that must not be overwritten."""


class UnknownKey(UserError, KeyError):
    """A name or ID that is not there (an item not in the catalog, a candidate list a record lacks)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""

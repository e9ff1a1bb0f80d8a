"""The base class of errors in what the user gave us (a file, a flag, a recipe).

The command line prints a :class:`UserError` as one line (the message names the file and the
field); any other exception is a bug and is shown with its traceback (see ``quadmix_stream.cli``).
Project error classes (``LabelError``, ``ParamsError``, ``RecipeError``, ...) derive from it, and
stay ``ValueError`` subclasses so that existing ``except ValueError`` code keeps working.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input from the user: a file, folder, flag or recipe that cannot be used as given."""


class UnsafePathError(UserError):
    """A path read from a data file (index, manifest, tar) that would leave the dataset folder."""

"""User-facing errors: the CLI prints these as one line and exits 2, without a traceback."""


class UserError(Exception):
    """A mistake the user can fix (missing path, bad argument, unwritable output)."""

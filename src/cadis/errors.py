"""The one exception type users see: a message that says what went wrong and what to do."""


class CadisError(Exception):
    """A user-facing error. The CLI prints it on one line and exits non-zero; the apps show it."""

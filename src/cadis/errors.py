"""The one exception type users see: a message that says what went wrong and what to do."""

from __future__ import annotations

QUOTE_LIMIT = 80


class CadisError(Exception):
    """A user-facing error. The CLI prints it on one line and exits non-zero; the apps show it."""


def quote(value: object, limit: int = QUOTE_LIMIT) -> str:
    """`value` quoted for an error line, cut to `limit` characters: bad input can be megabytes long."""
    try:
        text = value if isinstance(value, str) else str(value)
    except ValueError:  # an int too long to print
        return f"<a {type(value).__name__} too long to show>"
    return repr(text[:limit]) + (f"... ({len(text)} characters)" if len(text) > limit else "")


def os_error_line(error: OSError) -> str:
    """One line for an OSError that reached the command line: what failed, on which file (its name quoted)."""
    where = f" ({quote(error.filename)})" if error.filename else ""
    return (f"{error.strerror or error}{where}; check the path (its length, its folders), the permissions and the "
            "free space.")

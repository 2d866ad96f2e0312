"""The exception types: mistakes a user can make, and runs that fail.

Anything a user can get wrong (a path, a file, a name, a value) raises
:class:`UserError` with a one-line message that says what is wrong and what is
allowed. The command line prints that line and exits with status 2; every other
exception is a bug and keeps its traceback. ``UserError`` subclasses
``ValueError`` so that library callers can catch it the usual way.
"""


def one_line(e: BaseException) -> str:
    """An exception's message on one line (for a UserError that quotes it), or its type's name."""
    return " ".join(str(e).split()) or type(e).__name__


def short_repr(v, limit: int = 60) -> str:
    """``repr(v)``, cut to ``limit`` characters: a value quoted in a one-line error."""
    text = repr(v)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class UserError(ValueError):
    """A mistake in what the user asked for; the message is one line."""


class Diverged(RuntimeError):
    """A training run whose loss became NaN or infinite: a failed run, not a mistake in the input.

    The command line prints it in one line with exit status 1 (a user mistake is status 2).
    """

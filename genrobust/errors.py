"""One exception type for every problem a user can fix; the CLI prints its message, never a traceback."""


class GenrobustError(ValueError):
    """A user-facing error: bad input, unknown name, missing data or checkpoint."""

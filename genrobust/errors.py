"""One exception type for every problem a user can fix; the CLI prints its message, never a traceback."""


class GenrobustError(ValueError):
    """A user-facing error: bad input, unknown name, missing data or checkpoint."""


def validation_message(exc) -> str:
    """A pydantic ValidationError as one line: 'field: problem; field: problem'."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors())

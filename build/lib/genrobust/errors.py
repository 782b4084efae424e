"""One exception type for every problem a user can fix; the CLI prints its message, never a traceback."""


class GenrobustError(ValueError):
    """A user-facing error: bad input, unknown name, missing data or checkpoint."""


def validation_message(exc) -> str:
    """A pydantic ValidationError as one line: 'field: problem; field: problem'."""
    # pydantic prefixes messages of custom validators with "Value error, ": noise for a user
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg'].removeprefix('Value error, ')}"
                     for e in exc.errors())

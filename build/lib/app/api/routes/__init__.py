"""Route modules; ``errors(...)`` documents the error responses a route can give (all ``{"detail": ...}``)."""

from app.schemas import ErrorBody

_WHY = {400: "Malformed JSON.", 401: "Missing or wrong X-API-Key.", 404: "Not found.",
        409: "Conflict: the job already finished, or a stored model conflicts with the request (the message says which).", 413: "Body or image count over the configured limit.",
        422: "Invalid input: the message says what is wrong.",
        503: "Overloaded (the message names the setting that bounds the work) or the broker / result store is "
             "unreachable; retry after the Retry-After header's seconds."}


def errors(*codes: int) -> dict:
    return {c: {"model": ErrorBody, "description": _WHY[c]} for c in codes}

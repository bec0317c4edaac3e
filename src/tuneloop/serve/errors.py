"""The OpenAI-shaped errors the server answers a request with, defined once for the whole of serve."""

from __future__ import annotations

from tuneloop.protocol import OpenAIError


def invalid_parameter(message: str, param: str) -> OpenAIError:
    """400 ``invalid_parameter``: the request's ``param`` can't be served as given."""
    return OpenAIError(400, f"{param}: {message}", param=param, code="invalid_parameter")


def model_not_found(model: str, why: str, hint: str | None = None) -> OpenAIError:
    """404 ``model_not_found``: this server does not serve ``model``, and why."""
    text = f"model {model!r} not found: {why}"
    if hint:
        text += f" ({hint})"
    return OpenAIError(404, text, param="model", code="model_not_found")


def integrity_error(model: str, why: str, hint: str | None = None) -> OpenAIError:
    """409 ``model_integrity_error``: ``model`` exists but its files or base can't be trusted."""
    text = f"refusing to serve {model}: {why}"
    if hint:
        text += f" (fix: {hint})"
    return OpenAIError(409, text, param="model", code="model_integrity_error")

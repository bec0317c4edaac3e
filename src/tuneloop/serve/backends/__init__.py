"""Generation backends behind one small interface (see ``base.py``).

``get_backend("llamacpp" | "transformers", base)`` builds one; engines are imported only when asked for,
so choosing llama.cpp never imports torch and vice versa.
"""

from __future__ import annotations

from typing import Any

from tuneloop.bases import Base
from tuneloop.errors import TuneloopError
from tuneloop.serve.backends.base import (
    MAX_TOP_LOGPROBS,
    Adapter,
    Backend,
    Delta,
    FinishReason,
    Generation,
    GenerationParams,
    Message,
    StopStrings,
    TokenLogprob,
    TokenRun,
    TokenStreamBackend,
)

BACKEND_NAMES = ("llamacpp", "transformers")


def engine_identity(name: str, options: dict[str, Any]) -> str:
    """The backend and those of its options that change its answers: ``llamacpp:f32`` for llama.cpp on a
    float rewrite of its GGUF, else the backend's name (part of an eval's model identity and label)."""
    weights = options.get("weights", "native")
    return f"{name}:{weights}" if name == "llamacpp" and weights != "native" else name


def get_backend(name: str, base: Base, **options: Any) -> Backend:
    """A ready backend over ``base``; ``options`` go to the backend's constructor (n_ctx, device, ...)."""
    if name == "llamacpp":
        from tuneloop.serve.backends.llamacpp import LlamaCppBackend

        return LlamaCppBackend(base, **options)
    if name == "transformers":
        from tuneloop.serve.backends.transformers import TransformersBackend

        return TransformersBackend(base, **options)
    raise TuneloopError(f"unknown backend {name!r}", where="backend", hint="use one of: " + ", ".join(BACKEND_NAMES))


__all__ = [
    "BACKEND_NAMES",
    "MAX_TOP_LOGPROBS",
    "Adapter",
    "Backend",
    "Delta",
    "FinishReason",
    "Generation",
    "GenerationParams",
    "Message",
    "StopStrings",
    "TokenLogprob",
    "TokenRun",
    "TokenStreamBackend",
    "engine_identity",
    "get_backend",
]

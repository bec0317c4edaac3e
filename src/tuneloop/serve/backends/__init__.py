"""Generation backends behind one small interface (``base.py``), and the one registry that builds them.

``get_backend(name, base, options)`` builds ``llamacpp`` (CPU), ``transformers`` (the reference, batching)
or ``vllm`` (vLLM's own server, from its own virtualenv, on GPUs or CPUs: ``vllm.py``), each from its own
typed options (``options.py``; None: the defaults).
``backend_options(name, values)`` turns a mapping (an eval's stored ``backend_options``, serve's flags)
into those options. Engines are imported only when asked for, so choosing llama.cpp never imports torch
and vice versa.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from tuneloop.bases import Base
from tuneloop.errors import TuneloopError
from tuneloop.generation import MAX_TOP_LOGPROBS, FinishReason, GenerationParams, Message
from tuneloop.serve.backends.base import (
    Adapter,
    Backend,
    Delta,
    Generation,
    StopStrings,
    TokenLogprob,
    TokenRun,
    TokenStreamBackend,
    TrainedPrompt,
    served_messages,
    takes_concurrent_calls,
)
from tuneloop.serve.backends.options import BackendOptions, LlamaCppOptions, TransformersOptions, VllmOptions

# name → (module, class, options class); the module is imported when the backend is built.
_BACKENDS: dict[str, tuple[str, str, type[Any]]] = {
    "llamacpp": ("tuneloop.serve.backends.llamacpp", "LlamaCppBackend", LlamaCppOptions),
    "transformers": ("tuneloop.serve.backends.transformers", "TransformersBackend", TransformersOptions),
    "vllm": ("tuneloop.serve.backends.vllm", "VllmBackend", VllmOptions),
}
BACKEND_NAMES = tuple(_BACKENDS)
CPU_BACKEND_NAMES = ("llamacpp", "transformers")  # in-process backends (vllm runs as its own server)


def options_type(name: str) -> type[Any]:
    """The options class of backend ``name``; a TuneloopError listing the known backends otherwise."""
    entry = _BACKENDS.get(name)
    if entry is None:
        raise TuneloopError(
            f"unknown backend {name!r}", where="--backend", hint="use one of: " + ", ".join(BACKEND_NAMES)
        )
    return entry[2]


def backend_options(name: str, values: Mapping[str, Any] | None = None, *, strict: bool = True) -> BackendOptions:
    """Backend ``name``'s options from ``values`` (field name → value). ``strict``: a key the backend
    has no option for is a TuneloopError naming it; otherwise it is left out (serve passes all its flags,
    and each backend takes its own)."""
    kind = options_type(name)
    known = [option.name for option in fields(kind)]
    values = dict(values or {})
    unknown = sorted(key for key in values if key not in known)
    if unknown and strict:
        raise TuneloopError(
            f"the {name} backend has no option {unknown[0]!r}",
            where=f"backend option {unknown[0]}",
            hint=f"{name} takes: " + ", ".join(known),
        )
    return kind(**{key: value for key, value in values.items() if key in known})


def engine_identity(name: str, options: BackendOptions | None = None) -> str:
    """The backend and those of its options that change its answers (part of an eval's model identity and
    label): ``llamacpp:f32`` for llama.cpp on a float rewrite of its GGUF, ``llamacpp:forced`` with forced
    tokens on (appending them in one step rounds differently); else the backend's name. The prefix cache
    and the thread count leave answers as they are."""
    if name != "llamacpp":
        return name
    parts = [name]
    if getattr(options, "weights", "native") != "native":
        parts.append(options.weights)  # type: ignore[union-attr]
    if getattr(options, "forced_tokens", False):
        parts.append("forced")
    return ":".join(parts)


def get_backend(name: str, base: Base, options: BackendOptions | None = None) -> Backend:
    """A ready backend ``name`` over ``base``, built with ``options`` (its own options class; None: defaults)."""
    kind = options_type(name)
    if options is None:
        options = kind()
    elif not isinstance(options, kind):
        raise TuneloopError(
            f"the {name} backend takes {kind.__name__}, not {type(options).__name__}", where="backend options"
        )
    module, class_name, _ = _BACKENDS[name]
    backend_class = getattr(importlib.import_module(module), class_name)
    return backend_class(base, options)


__all__ = [
    "BACKEND_NAMES",
    "CPU_BACKEND_NAMES",
    "MAX_TOP_LOGPROBS",
    "Adapter",
    "Backend",
    "BackendOptions",
    "Delta",
    "FinishReason",
    "Generation",
    "GenerationParams",
    "LlamaCppOptions",
    "Message",
    "StopStrings",
    "TokenLogprob",
    "TokenRun",
    "TokenStreamBackend",
    "TrainedPrompt",
    "TransformersOptions",
    "VllmOptions",
    "backend_options",
    "engine_identity",
    "get_backend",
    "options_type",
    "served_messages",
    "takes_concurrent_calls",
]

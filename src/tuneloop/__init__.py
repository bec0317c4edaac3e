"""tuneloop: from an expensive API model to a small fine-tuned open model in production."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["AsyncOpenAI", "OpenAI", "__version__"]

if TYPE_CHECKING:
    from tuneloop.capture.sdk import AsyncOpenAI, OpenAI


def __getattr__(name: str) -> Any:
    # Lazy: `import tuneloop` stays cheap; the openai client and the store load on first use of the wrapper.
    if name in ("OpenAI", "AsyncOpenAI"):
        from tuneloop.capture import sdk

        return getattr(sdk, name)
    raise AttributeError(f"module 'tuneloop' has no attribute {name!r}")

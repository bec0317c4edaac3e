"""Base models: resolving names to local files, their weights hash, and loading them into an engine.

``resolve_base("smollm2-135m-instruct" | "hf:org/name" | "/path/to/model")`` never downloads;
``load_transformers`` / ``load_llamacpp`` load a resolved base; a GGUF base is converted to HF format once
and cached (``transformers_dir``).
"""

from tuneloop.bases.catalog import BaseInfo, describe_base, list_bases
from tuneloop.bases.loading import (
    CONVERSION_MARKER,
    align_special_tokens,
    conversion_dir,
    conversion_info,
    end_of_turn_token,
    is_conversion_cached,
    load_llamacpp,
    load_transformers,
    transformers_dir,
)
from tuneloop.bases.resolve import BUNDLED_BASES, DEFAULT_BASE, Base, BaseKind, known_base_names, resolve_base
from tuneloop.bases.weights import base_weights_hash, known_weights_hash, weight_files

__all__ = [
    "BUNDLED_BASES",
    "CONVERSION_MARKER",
    "DEFAULT_BASE",
    "Base",
    "BaseInfo",
    "BaseKind",
    "align_special_tokens",
    "base_weights_hash",
    "conversion_dir",
    "conversion_info",
    "describe_base",
    "end_of_turn_token",
    "is_conversion_cached",
    "known_base_names",
    "known_weights_hash",
    "list_bases",
    "load_llamacpp",
    "load_transformers",
    "resolve_base",
    "transformers_dir",
    "weight_files",
]

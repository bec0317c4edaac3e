"""The registry: the model-id grammar (``ids.py``), immutable versions (``versions.py``),
promote/rollback of aliases (``promotion.py``), GGUF LoRA exports (``exports.py``).

Other stages resolve a ``task@N`` / ``task@sha256:...`` / ``task@alias`` through ``resolve_version``.
"""

from tuneloop.registry.ids import BaseRef, EndpointRef, ModelRef, VersionRef, parse_model_id
from tuneloop.registry.versions import (
    ModelVersionInfo,
    content_hash,
    list_versions,
    register_version,
    resolve_version,
    verify_version,
)

__all__ = [
    "BaseRef",
    "EndpointRef",
    "ModelRef",
    "ModelVersionInfo",
    "VersionRef",
    "content_hash",
    "list_versions",
    "parse_model_id",
    "register_version",
    "resolve_version",
    "verify_version",
]

"""Derived serving artifacts of a version: the GGUF LoRA that llama.cpp needs, exported once and cached.

The export is a pure function of the version's files (which its content hash covers), so it is cached as
``<cache>/gguf-lora/<content_hash>.gguf``. A ``.sha256`` file beside it records the export's own digest:
the cache is outside the version folder and the content hash, so a cached file that no longer matches
is exported again rather than trusted.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

from tuneloop.config import get_settings
from tuneloop.errors import TuneloopError
from tuneloop.registry.gguf_lora import architecture_of, export_gguf_lora
from tuneloop.registry.versions import ModelVersionInfo

_export_lock = threading.Lock()  # two requests for a new version must not export it twice at once


def gguf_lora_path(info: ModelVersionInfo, *, cache_dir: Path | None = None) -> Path:
    return (cache_dir or get_settings().cache_dir) / "gguf-lora" / f"{info.content_hash}.gguf"


def ensure_gguf_lora(info: ModelVersionInfo, *, cache_dir: Path | None = None) -> Path:
    """The version's adapter as a GGUF LoRA file, exported on first use and cached by content hash."""
    out_path = gguf_lora_path(info, cache_dir=cache_dir)
    digest_path = out_path.with_suffix(".gguf.sha256")
    with _export_lock:
        if out_path.is_file() and digest_path.is_file() and _sha256(out_path) == digest_path.read_text().strip():
            return out_path
        config = base_hf_config(info.base_id)
        architecture_of(config, where=info.id)  # refused naming the version, before reading its files
        export_gguf_lora(info.adapter_path, config, out_path)
        digest_path.write_text(_sha256(out_path) + "\n")
    return out_path


def base_hf_config(base_id: str) -> dict[str, Any]:
    """What the exporter needs of the base's HF ``config.json``: from the file for HF bases, from the
    GGUF metadata for GGUF ones (so exporting never needs the transformers conversion)."""
    from tuneloop.bases import resolve_base

    base = resolve_base(base_id)
    if base.hf_dir is not None and (base.hf_dir / "config.json").is_file():
        return json.loads((base.hf_dir / "config.json").read_text())
    if base.gguf_path is None:
        raise TuneloopError("the base has neither a config.json nor a GGUF file", where=base_id)
    from tuneloop.bases.gguf_metadata import read_gguf_metadata

    # Not gguf.GGUFReader: 12.7 s over Gemma 3's 262k-token vocabulary, 42 ms this way (benchmarks/bundled_bases.py).
    metadata = read_gguf_metadata(base.gguf_path)
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str):
        raise TuneloopError("the GGUF file names no general.architecture", where=str(base.gguf_path))
    return {
        "model_type": arch,
        "num_hidden_layers": metadata.get(f"{arch}.block_count"),
        "num_attention_heads": metadata.get(f"{arch}.attention.head_count"),
        "num_key_value_heads": metadata.get(f"{arch}.attention.head_count_kv"),
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

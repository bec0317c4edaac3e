"""The identity of a base's weights: a sha256 computed once per file version.

The registry puts this hash in each fine-tune's content hash, so a version trained on other weights can
never be loaded on these. Hashing ~100 MB to several GB on every start would be slow, so each file's
digest is cached on disk keyed by (path, size, mtime): a file replaced in place gets hashed again.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path

from tuneloop.bases.resolve import Base
from tuneloop.config import get_settings
from tuneloop.errors import TuneloopError

_CHUNK = 4 << 20
_memo: dict[str, str] = {}
_memo_lock = threading.Lock()


def weight_files(base: Base) -> list[Path]:
    """The files that hold a base's weights, in a stable order."""
    if base.gguf_path is not None:
        return [base.gguf_path]
    assert base.hf_dir is not None
    # safetensors when there are any; older checkpoints only have pytorch_model*.bin
    files = sorted(base.hf_dir.glob("*.safetensors")) or sorted(base.hf_dir.glob("pytorch_model*.bin"))
    if not files:
        raise TuneloopError(
            "the model folder has no weight files (*.safetensors or pytorch_model*.bin)",
            where=str(base.hf_dir),
            hint="save the model with save_pretrained, or download the full snapshot",
        )
    return files


def base_weights_hash(base: Base, *, cache_dir: Path | None = None) -> str:
    """sha256 (hex) of the base's weights.

    One file: the file's own sha256 (what ``sha256sum`` prints). Several: the sha256 of the manifest
    ``"<name> <sha256>\\n"`` over the files in name order.
    """
    files = weight_files(base)
    digests = [(path.name, _file_sha256(path, cache_dir)) for path in files]
    if len(digests) == 1:
        return digests[0][1]
    manifest = "".join(f"{name} {digest}\n" for name, digest in digests)
    return hashlib.sha256(manifest.encode()).hexdigest()


def known_weights_hash(base: Base, *, cache_dir: Path | None = None) -> str | None:
    """The weights hash when every file's digest is already cached (no hashing); None otherwise."""
    try:
        files = weight_files(base)
        keys = [_key(path) for path in files]
    except (OSError, TuneloopError):
        return None
    with _memo_lock:
        digests = [_memo.get(key) for key in keys]
    if None in digests:
        stored = _read_store(_store_path(cache_dir))
        digests = [digest or stored.get(key) for digest, key in zip(digests, keys, strict=True)]
    if None in digests:
        return None
    if len(digests) == 1:
        return digests[0]
    manifest = "".join(f"{path.name} {digest}\n" for path, digest in zip(files, digests, strict=True))
    return hashlib.sha256(manifest.encode()).hexdigest()


def _key(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


def _file_sha256(path: Path, cache_dir: Path | None) -> str:
    key = _key(path)
    with _memo_lock:
        if key in _memo:
            return _memo[key]
    store = _store_path(cache_dir)
    stored = _read_store(store)
    digest = stored.get(key)
    if digest is None:
        digest = _stream_sha256(path)
        stored = _read_store(store)  # re-read: another process may have added entries meanwhile
        stored[key] = digest
        _write_store(store, stored)
    with _memo_lock:
        _memo[key] = digest
    return digest


def remember_file_sha256(path: Path, digest: str, *, cache_dir: Path | None = None) -> None:
    """Record a digest the caller has just computed while writing ``path`` (an assembled bundled base)."""
    key = _key(path)
    store = _store_path(cache_dir)
    stored = _read_store(store)
    stored[key] = digest
    _write_store(store, stored)
    with _memo_lock:
        _memo[key] = digest


def _stream_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _store_path(cache_dir: Path | None) -> Path:
    return (cache_dir or get_settings().cache_dir) / "bases" / "weights-sha256.json"


def _read_store(store: Path) -> dict[str, str]:
    try:
        data = json.loads(store.read_text())
    except (OSError, ValueError):
        return {}  # missing or damaged: it is only a cache
    return data if isinstance(data, dict) else {}


def _write_store(store: Path, data: dict[str, str]) -> None:
    # Write to a temp file and rename, so a reader never sees half a file.
    store.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=store.parent, prefix=".weights-sha256.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
        os.replace(tmp, store)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

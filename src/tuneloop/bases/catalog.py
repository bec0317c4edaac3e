"""What bases this machine has: the bundled ones and the causal LMs already in the local HF cache."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tuneloop.bases.assembly import assembled_path, chunked_file, find_assembled
from tuneloop.bases.loading import is_conversion_cached
from tuneloop.bases.resolve import BUNDLED_BASES, HF_PREFIX, Base, BaseKind, BundledBase, resolve_base
from tuneloop.bases.weights import weight_files
from tuneloop.errors import TuneloopError


@dataclass(frozen=True)
class BaseInfo:
    """One row of ``tuneloop bases list``."""

    id: str
    kind: BaseKind
    available: bool
    path: Path | None = None
    size_bytes: int | None = None
    conversion_cached: bool | None = None  # None: does not apply (not available)
    description: str = ""
    license: str = ""
    problem: str = ""  # why it is not available, with the fix
    note: str = ""  # e.g. a chunked bundled base not assembled yet (path is where it will be)


def describe_base(base: Base, *, cache_dir: Path | None = None) -> BaseInfo:
    return BaseInfo(
        id=base.id,
        kind=base.kind,
        available=True,
        path=base.path,
        size_bytes=sum(path.stat().st_size for path in weight_files(base)),
        conversion_cached=is_conversion_cached(base, cache_dir=cache_dir),
        description=base.description,
        license=base.license,
    )


def list_bases(*, cache_dir: Path | None = None, include_hf_cache: bool = True) -> list[BaseInfo]:
    """The bundled bases (available or not, with why) and the causal LMs in the local HF cache."""
    rows: list[BaseInfo] = []
    for bundled in BUNDLED_BASES.values():
        try:
            if bundled.chunked and find_assembled(bundled, cache_dir=cache_dir) is None:
                rows.append(_not_assembled_yet(bundled, cache_dir))  # listing must not write a few hundred MB
                continue
            rows.append(describe_base(resolve_base(bundled.id), cache_dir=cache_dir))
        except TuneloopError as exc:
            rows.append(
                BaseInfo(
                    id=bundled.id,
                    kind="bundled",
                    available=False,
                    description=bundled.description,
                    license=bundled.license,
                    problem=f"{exc.message}; fix: {exc.hint}" if exc.hint else exc.message,
                )
            )
    if include_hf_cache:
        for name in _causal_lms_in_hf_cache():
            try:
                rows.append(describe_base(resolve_base(name), cache_dir=cache_dir))
            except TuneloopError:
                continue  # an incomplete snapshot (e.g. only config files): not a usable base
    return rows


def _not_assembled_yet(bundled: BundledBase, cache_dir: Path | None) -> BaseInfo:
    source = chunked_file(bundled)
    return BaseInfo(
        id=bundled.id,
        kind="bundled",
        available=True,
        path=assembled_path(bundled, source.sha256, cache_dir=cache_dir),
        size_bytes=source.size,
        conversion_cached=False,
        description=bundled.description,
        license=bundled.license,
        note="installed; assembled from its chunk packages on first use (a few seconds, once)",
    )


def _causal_lms_in_hf_cache() -> list[str]:
    """Base names of the causal LMs in the HF cache: ``hf:org/name`` for its main branch, and
    ``hf:org/name@ref`` (or ``@<commit>``) for other revisions pulled."""
    from huggingface_hub import constants, scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        # The cache resolve_base reads (constants.HF_HUB_CACHE, read now): scan_cache_dir's default is its
        # own copy of that constant, taken when huggingface_hub was first imported.
        cache = scan_cache_dir(constants.HF_HUB_CACHE)
    except CacheNotFound:
        return []
    found = []
    for repo in cache.repos:
        if repo.repo_type != "model":
            continue
        for revision in sorted(repo.revisions, key=lambda revision: revision.last_modified, reverse=True):
            if not _is_causal_lm(revision.snapshot_path):
                continue
            if "main" in revision.refs:
                found.append(HF_PREFIX + repo.repo_id)
            else:
                pin = sorted(revision.refs)[0] if revision.refs else revision.commit_hash[:12]
                found.append(f"{HF_PREFIX}{repo.repo_id}@{pin}")
    return sorted(found)


def _is_causal_lm(snapshot: Path) -> bool:
    if any(snapshot.glob("*.gguf")):
        return True
    try:
        config = json.loads((snapshot / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return any(name.endswith("ForCausalLM") for name in config.get("architectures") or [])

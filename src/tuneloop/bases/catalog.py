"""What bases this machine has: the bundled ones and the causal LMs already in the local HF cache."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tuneloop.bases.loading import is_conversion_cached
from tuneloop.bases.resolve import BUNDLED_BASES, HF_PREFIX, Base, BaseKind, resolve_base
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
        for repo_id in _causal_lms_in_hf_cache():
            try:
                rows.append(describe_base(resolve_base(HF_PREFIX + repo_id), cache_dir=cache_dir))
            except TuneloopError:
                continue  # an incomplete snapshot (e.g. only config files): not a usable base
    return rows


def _causal_lms_in_hf_cache() -> list[str]:
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        cache = scan_cache_dir()
    except CacheNotFound:
        return []
    found = []
    for repo in cache.repos:
        if repo.repo_type != "model":
            continue
        latest = max(repo.revisions, key=lambda revision: revision.last_modified, default=None)
        if latest is not None and _is_causal_lm(latest.snapshot_path):
            found.append(repo.repo_id)
    return sorted(found)


def _is_causal_lm(snapshot: Path) -> bool:
    if any(snapshot.glob("*.gguf")):
        return True
    try:
        config = json.loads((snapshot / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return any(name.endswith("ForCausalLM") for name in config.get("architectures") or [])

"""Model versions: immutable fine-tunes ``task@N``, named by number, by content hash, or through an alias.

A version's **content hash** is the sha256 of a canonical JSON of what decides its answers:

- the adapter: every tensor of ``adapter_model.safetensors`` (name, dtype, shape and a sha256 of its bytes,
  sorted by name) and the adapter settings that scale or place it (``r``, ``lora_alpha``, target modules, ...);
- the base: its id and the sha256 of its weights;
- the chat template the adapter was trained with;
- the task's prompt (system prompt and input template) and decoding defaults; for a version trained with a
  short system prompt in place of the task's instructions (prompt distillation), also those instructions
  (``distilled_from``: left out otherwise, so earlier versions keep their hashes).

Registering the same files again finds the same hash and returns the existing version rather than a new
number; any change of a weight gives another hash. Registration copies the adapter into
``<artifacts>/models/<task>/<N>/`` (files made read-only) with a ``tuneloop.json`` holding the version's
metadata, and adds the ``model_versions`` row. Resolving verifies the files against the stored hash: a
modified artifact is refused, naming the version.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import struct
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from tuneloop.config import get_settings
from tuneloop.errors import TuneloopError
from tuneloop.licenses import UNKNOWN_LICENSE, License, normalize_license
from tuneloop.registry.ids import VersionRef, parse_model_id

METADATA_FILE = "tuneloop.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
LOSS_CURVE = "loss_curve.png"
MERGED_DIR = "merged"
HASH_SCHEME = "tuneloop-version-v1"

# adapter_config.json keys that change what the adapter computes (paths and bookkeeping are left out).
ADAPTER_CONFIG_KEYS = (
    "peft_type",
    "r",
    "lora_alpha",
    "use_rslora",
    "use_dora",
    "target_modules",
    "exclude_modules",
    "modules_to_save",
    "fan_in_fan_out",
    "bias",
    "rank_pattern",
    "alpha_pattern",
    "layers_to_transform",
    "layers_pattern",
    "lora_bias",
)


@dataclass(frozen=True)
class ModelVersionInfo:
    """A registered version, as every stage sees it (evals, serve, the CLI)."""

    id: str  # "task@N"
    task: str
    version: int
    content_hash: str  # 64 hex digits, without "sha256:"
    base_id: str
    base_weights_hash: str | None
    artifact_path: Path  # the version's folder
    adapter_path: Path  # a PEFT adapter folder: PeftModel.from_pretrained(base_model, adapter_path)
    chat_template: str | None
    system_prompt: str  # the one it was trained with ("" : no system message)
    input_template: str
    decoding: dict[str, Any]  # temperature, top_p, max_tokens
    dataset_ref: str | None
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    # The task instructions ``system_prompt`` stands for, when it was trained with a shorter prompt (or none)
    # in their place: serving swaps them for it (serve/backends/base.py ``served_messages``). None otherwise.
    distilled_from: str | None = None

    @property
    def hash_ref(self) -> str:
        """``task@sha256:<hash>``: the version named by its content."""
        return f"{self.task}@sha256:{self.content_hash}"

    @property
    def merged_path(self) -> Path | None:
        """Merged full weights (``--merge``), when they were written."""
        merged = self.artifact_path / MERGED_DIR
        return merged if (merged / "config.json").is_file() else None

    @property
    def loss_curve_path(self) -> Path | None:
        curve = self.artifact_path / LOSS_CURVE
        return curve if curve.is_file() else None


# --- the content hash ----------------------------------------------------------------------------


def safetensors_digests(path: Path) -> dict[str, dict[str, Any]]:
    """Per tensor: dtype, shape and the sha256 of its bytes, read straight from the file (no torch)."""
    try:
        with path.open("rb") as handle:
            (header_size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(header_size))
            data_start = 8 + header_size
            digests: dict[str, dict[str, Any]] = {}
            for name in sorted(k for k in header if k != "__metadata__"):
                entry = header[name]
                begin, end = entry["data_offsets"]
                handle.seek(data_start + begin)
                digests[name] = {
                    "dtype": entry["dtype"],
                    "shape": entry["shape"],
                    "sha256": hashlib.sha256(handle.read(end - begin)).hexdigest(),
                }
    except FileNotFoundError:
        raise TuneloopError("adapter weights are missing", where=str(path)) from None
    except (struct.error, ValueError, KeyError) as exc:
        raise TuneloopError(f"not a readable safetensors file ({exc})", where=str(path)) from None
    return digests


def adapter_identity(adapter_dir: Path) -> dict[str, Any]:
    try:
        config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    except FileNotFoundError:
        raise TuneloopError(f"{ADAPTER_CONFIG} is missing", where=str(adapter_dir)) from None
    settings = {key: _canonical(config.get(key)) for key in ADAPTER_CONFIG_KEYS if config.get(key) is not None}
    return {"tensors": safetensors_digests(adapter_dir / ADAPTER_WEIGHTS), "settings": settings}


def _canonical(value: Any) -> Any:
    if isinstance(value, list | set | tuple):  # target_modules may be saved as a list in any order
        return sorted(_canonical(v) for v in value) if all(isinstance(v, str) for v in value) else list(value)
    return value


def read_chat_template(folder: Path) -> str | None:
    """The chat template saved with a tokenizer (``chat_template.jinja``, else ``tokenizer_config.json``)."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = folder / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        return template if isinstance(template, str) else None
    return None


def build_identity(
    adapter_dir: Path,
    *,
    base_id: str,
    base_weights_hash: str | None,
    chat_template: str | None,
    system_prompt: str,
    input_template: str,
    decoding: dict[str, Any],
    distilled_from: str | None = None,
) -> dict[str, Any]:
    prompt = {"system": system_prompt, "input": input_template}
    if distilled_from is not None:  # only when set: versions without it keep their content hashes
        prompt["distilled_from"] = distilled_from
    return {
        "scheme": HASH_SCHEME,
        "adapter": adapter_identity(adapter_dir),
        "base": {"id": base_id, "weights_sha256": base_weights_hash},
        "chat_template": chat_template,
        "prompt": prompt,
        "decoding": {k: decoding[k] for k in sorted(decoding)},
    }


def content_hash(identity: dict[str, Any]) -> str:
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# --- the base a version was trained on ------------------------------------------------------------


def base_record(base_id: str) -> dict[str, Any] | None:
    """What a version records of its base beside the weights hash: its license and (hf: bases) its commit.
    None when the base does not resolve here (a version registered from elsewhere)."""
    from tuneloop.bases import resolve_base

    try:
        base = resolve_base(base_id)
    except TuneloopError:
        return None
    return {
        "license": base.license,
        "license_id": base.license_id,
        "license_source": base.license_source,
        "commit": base.commit,
        "format": base.format,
    }


def version_base_license(info: ModelVersionInfo) -> License:
    """The license of the base ``info`` was trained on: as recorded at registration, else as the base says now."""
    recorded = info.config.get("base") or {}
    if isinstance(recorded.get("license"), str):
        text = recorded["license"]
        return License(text=text, id=normalize_license(text), source=recorded.get("license_source") or "catalog")
    record = base_record(info.base_id)
    if record is None:
        return UNKNOWN_LICENSE
    return License(text=record["license"], id=record["license_id"], source=record["license_source"])


def version_base_commit(info: ModelVersionInfo) -> str | None:
    """The Hub commit of an hf: base: as recorded at registration, else pinned in its id (``@<40 hex>``)."""
    recorded = (info.config.get("base") or {}).get("commit")
    if isinstance(recorded, str):
        return recorded
    _, _, revision = info.base_id.partition("@")
    return revision if info.base_id.startswith("hf:") and len(revision) == 40 else None


# --- registering ---------------------------------------------------------------------------------


def models_dir() -> Path:
    return get_settings().artifacts_dir / "models"


def register_version(
    task: str,
    adapter_dir: Path,
    *,
    base_id: str,
    base_weights_hash: str | None,
    system_prompt: str,
    input_template: str,
    decoding: dict[str, Any],
    dataset_ref: str | None = None,
    config: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    extra_files: dict[str, Path] | None = None,
    distilled_from: str | None = None,
) -> tuple[ModelVersionInfo, bool]:
    """Register the adapter in ``adapter_dir`` as the next version of ``task``; returns (version, created).

    Same content as an existing version: that version, and ``created`` False (nothing is copied).
    ``extra_files`` maps names in the version folder to files or folders to copy there (the loss curve,
    merged weights); they are not part of the hash. ``distilled_from``: the task instructions that
    ``system_prompt`` was trained in place of (prompt distillation), which serving replaces with it.
    """
    from tuneloop.store import session_scope
    from tuneloop.store.models import ModelVersion

    chat_template = read_chat_template(adapter_dir)
    config = dict(config or {})
    if "base" not in config and (record := base_record(base_id)) is not None:
        config["base"] = record  # not part of the hash: the weights hash already pins the base
    identity = build_identity(
        adapter_dir,
        base_id=base_id,
        base_weights_hash=base_weights_hash,
        chat_template=chat_template,
        system_prompt=system_prompt,
        input_template=input_template,
        decoding=decoding,
        distilled_from=distilled_from,
    )
    digest = content_hash(identity)
    existing = _find_by_hash(digest)
    if existing is not None:
        return existing, False

    task_dir = models_dir() / task
    task_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=task_dir, prefix=".staging-"))
    try:
        shutil.copytree(adapter_dir, staging, dirs_exist_ok=True)
        for name, source in (extra_files or {}).items():
            if source.is_dir():
                shutil.copytree(source, staging / name)
            elif source.is_file():
                shutil.copy2(source, staging / name)
        for attempt in range(5):
            try:
                with session_scope() as session:
                    number = (
                        session.scalar(sa.select(sa.func.max(ModelVersion.version)).where(ModelVersion.task == task))
                        or 0
                    ) + 1
                    final = task_dir / str(number)
                    recorded = dict(metrics or {})
                    if (staging / LOSS_CURVE).is_file():
                        recorded["loss_curve"] = str(final / LOSS_CURVE)
                    row = ModelVersion(
                        task=task,
                        version=number,
                        content_hash=digest,
                        base_id=base_id,
                        base_weights_hash=base_weights_hash,
                        artifact_path=str(final),
                        dataset_ref=dataset_ref,
                        config={
                            **(config or {}),
                            "identity": {
                                "chat_template": chat_template,
                                "system_prompt": system_prompt,
                                "input_template": input_template,
                                "decoding": identity["decoding"],
                                **({"distilled_from": distilled_from} if distilled_from is not None else {}),
                            },
                        },
                        metrics=recorded,
                    )
                    session.add(row)
                    session.flush()  # a concurrent registration of the same number fails here
                    info = _info(row)
                    _write_metadata(staging, info, identity)
                    _make_read_only(staging)
                    if final.exists():  # a leftover folder without a row (an earlier crash): not ours to keep
                        _remove_tree(final)
                    os.replace(staging, final)
                return info, True
            except IntegrityError:
                again = _find_by_hash(digest)
                if again is not None:  # registered concurrently by another process
                    return again, False
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")
    except BaseException:
        if staging.exists():
            _remove_tree(staging)
        raise


def _write_metadata(folder: Path, info: ModelVersionInfo, identity: dict[str, Any]) -> None:
    metadata = {
        "id": info.id,
        "task": info.task,
        "version": info.version,
        "content_hash": f"sha256:{info.content_hash}",
        "base": {"id": info.base_id, "weights_sha256": info.base_weights_hash},
        "prompt": {
            "system": info.system_prompt,
            "input": info.input_template,
            **({"distilled_from": info.distilled_from} if info.distilled_from is not None else {}),
        },
        "decoding": info.decoding,
        "dataset": info.dataset_ref,
        "config": {k: v for k, v in info.config.items() if k != "identity"},
        "metrics": info.metrics,
        "loss_curve": LOSS_CURVE if (folder / LOSS_CURVE).is_file() else None,
        "merged": MERGED_DIR if (folder / MERGED_DIR).is_dir() else None,
        "created_at": info.created_at.isoformat() if info.created_at else None,
        "hashed": {"adapter_tensors": len(identity["adapter"]["tensors"]), "scheme": HASH_SCHEME},
    }
    (folder / METADATA_FILE).write_text(json.dumps(metadata, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _make_read_only(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    folder.chmod(0o755)


def _remove_tree(folder: Path) -> None:
    def make_writable_and_retry(function: Any, path: str, _excinfo: Any) -> None:
        os.chmod(path, stat.S_IWUSR | stat.S_IRUSR | stat.S_IXUSR)
        function(path)

    shutil.rmtree(folder, onerror=make_writable_and_retry)  # onerror: Python 3.11 has no onexc


# --- resolving -----------------------------------------------------------------------------------


def _info(row: Any) -> ModelVersionInfo:
    identity = (row.config or {}).get("identity", {})
    artifact = Path(row.artifact_path)
    return ModelVersionInfo(
        id=f"{row.task}@{row.version}",
        task=row.task,
        version=row.version,
        content_hash=row.content_hash,
        base_id=row.base_id,
        base_weights_hash=row.base_weights_hash,
        artifact_path=artifact,
        adapter_path=artifact,
        chat_template=identity.get("chat_template"),
        system_prompt=identity.get("system_prompt", ""),
        input_template=identity.get("input_template", ""),
        decoding=dict(identity.get("decoding", {})),
        dataset_ref=row.dataset_ref,
        config={k: v for k, v in (row.config or {}).items()},
        metrics=dict(row.metrics or {}),
        created_at=row.created_at,
        distilled_from=identity.get("distilled_from"),
    )


def _find_by_hash(digest: str) -> ModelVersionInfo | None:
    from tuneloop.store import session_scope
    from tuneloop.store.models import ModelVersion

    with session_scope() as session:
        row = session.scalar(sa.select(ModelVersion).where(ModelVersion.content_hash == digest))
        return _info(row) if row is not None else None


def resolve_version(ref: VersionRef | str, *, verify: bool = True) -> ModelVersionInfo:
    """The version ``ref`` names (``task@3``, ``task@sha256:<12+ hex>``, ``task@alias``).

    With ``verify`` (the default) the artifact's files are hashed again and must give the registered
    content hash, and the base's weights must be the ones it was trained on; otherwise TuneloopError
    names the version and what differs.
    """
    from tuneloop.store import session_scope
    from tuneloop.store.models import Alias, ModelVersion

    if isinstance(ref, str):
        parsed = parse_model_id(ref)
        if not isinstance(parsed, VersionRef):
            raise TuneloopError("not a task version (task@N, task@sha256:..., task@alias)", where=f"model {ref}")
        ref = parsed
    name = str(ref)
    with session_scope() as session:
        if ref.number is not None:
            row = session.scalar(
                sa.select(ModelVersion).where(ModelVersion.task == ref.task, ModelVersion.version == ref.number)
            )
        elif ref.content_hash is not None:
            prefix = ref.content_hash.removeprefix("sha256:")
            rows = session.scalars(
                sa.select(ModelVersion).where(
                    ModelVersion.task == ref.task, ModelVersion.content_hash.startswith(prefix, autoescape=True)
                )
            ).all()
            if len(rows) > 1:
                raise TuneloopError(
                    f"the hash prefix matches {len(rows)} versions", where=f"model {name}", hint="give more hex digits"
                )
            row = rows[0] if rows else None
        else:
            alias = session.get(Alias, (ref.task, ref.alias))
            row = alias.version if alias is not None else None
            if alias is None:
                raise TuneloopError(
                    f"no alias {ref.alias!r} for task {ref.task}",
                    where=f"model {name}",
                    hint=_known_versions_hint(session, ref.task),
                )
        if row is None:
            raise TuneloopError(
                f"no such version of task {ref.task}",
                where=f"model {name}",
                hint=_known_versions_hint(session, ref.task),
            )
        info = _info(row)
    if verify:
        verify_version(info)
    return info


def _known_versions_hint(session: Any, task: str) -> str:
    from tuneloop.store.models import ModelVersion

    numbers = session.scalars(
        sa.select(ModelVersion.version).where(ModelVersion.task == task).order_by(ModelVersion.version)
    ).all()
    if not numbers:
        return f"task {task} has no versions yet; train one with `tuneloop train --task {task} --data ...`"
    return f"versions of {task}: " + ", ".join(f"{task}@{n}" for n in numbers) + " (`tuneloop models list`)"


def verify_version(info: ModelVersionInfo, *, check_base: bool = True) -> None:
    """Refuse a version whose files no longer give its content hash, or whose base weights changed."""
    if not info.artifact_path.is_dir():
        raise TuneloopError(
            f"the files of {info.id} are missing",
            where=str(info.artifact_path),
            hint="the artifact folder was moved or deleted; restore it (or set TUNELOOP_HOME to where it is)",
        )
    identity = build_identity(
        info.adapter_path,
        base_id=info.base_id,
        base_weights_hash=info.base_weights_hash,
        chat_template=read_chat_template(info.adapter_path),
        system_prompt=info.system_prompt,
        input_template=info.input_template,
        decoding=info.decoding,
        distilled_from=info.distilled_from,
    )
    if content_hash(identity) != info.content_hash:
        raise TuneloopError(
            f"the files of {info.id} don't match its registered content hash sha256:{info.content_hash[:12]}; "
            "refusing to load a modified version",
            where=info.id,
            hint=f"restore {info.artifact_path} from a backup, or train and register a new version",
        )
    if check_base and info.base_weights_hash:
        from tuneloop.bases import base_weights_hash, resolve_base

        actual = base_weights_hash(resolve_base(info.base_id))
        if actual != info.base_weights_hash:
            raise TuneloopError(
                f"{info.id} was trained on {info.base_id} with weights sha256:{info.base_weights_hash[:12]}, "
                f"but that base's weights here are sha256:{actual[:12]}",
                where=info.id,
                hint="install the base version it was trained on, or train again on this one",
            )


def list_versions(task: str | None = None) -> list[ModelVersionInfo]:
    from tuneloop.store import session_scope
    from tuneloop.store.models import ModelVersion

    with session_scope() as session:
        query = sa.select(ModelVersion).order_by(ModelVersion.task, ModelVersion.version)
        if task is not None:
            query = query.where(ModelVersion.task == task)
        return [_info(row) for row in session.scalars(query)]


def aliases_of(info: ModelVersionInfo) -> list[str]:
    from tuneloop.store import session_scope
    from tuneloop.store.models import Alias, ModelVersion

    with session_scope() as session:
        rows = session.scalars(
            sa.select(Alias.alias)
            .join(ModelVersion, Alias.version_id == ModelVersion.id)
            .where(ModelVersion.task == info.task, ModelVersion.version == info.version)
            .order_by(Alias.alias)
        ).all()
    return list(rows)

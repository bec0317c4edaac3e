"""The models a server serves: which one a request names, whether its files can be trusted, the list.

The request side (``engine.py``) asks :meth:`ServedModels.resolve` for the model a request names and
gets a :class:`ServedModel`, ready for the backend; ``/v1/models`` is :meth:`ServedModels.list_models`.
A server serves every base this machine has and every registered version of any of them; the pool
(``pool.py``) loads their bases on demand.

- **Resolution.** ``task@3`` and ``task@sha256:…`` name immutable versions and are looked up once;
  ``task@prod`` is re-read from the store at most every ``alias_refresh_s`` (1 s by default), so
  ``tuneloop models promote``/``rollback`` reach a running server without a restart. A base name serves
  the bare base. Every response, log line and metric names the resolved version (``task@4``).
- **Integrity.** Before a version's adapter is loaded into an engine (the first time, and again after
  the engine's LRU evicted it), its files are hashed and compared with the registered content hash; a
  tampered version is refused (409 ``model_integrity_error``) and nothing of it is loaded. Bases are pinned
  the same way: a version records the sha256 of its base's weights, and when the base's files on this
  machine no longer hash to it (checked whenever the base is loaded) the version is refused with 409.
- **Task schema.** A version decodes under its task's output schema by default; it is read once per task.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from tuneloop.bases import Base
from tuneloop.errors import TuneloopError
from tuneloop.protocol import OpenAIError
from tuneloop.registry.ids import BaseRef, EndpointRef, VersionRef, parse_model_id
from tuneloop.registry.versions import ModelVersionInfo
from tuneloop.serve.backends import Adapter, TrainedPrompt
from tuneloop.serve.errors import integrity_error, model_not_found
from tuneloop.serve.metrics import ServeMetrics
from tuneloop.serve.pool import BaseSlot, ModelPool
from tuneloop.task import Task

log = logging.getLogger("tuneloop.serve")


@dataclass(frozen=True)
class ServedModel:
    """A request's model after resolution: ``id`` is immutable (``task@4`` or the base id)."""

    id: str
    base_id: str
    engine: str  # the backend its base runs on (pool.engine_for)
    version: ModelVersionInfo | None = None
    adapter: Adapter | None = None
    task: Task | None = None  # the version's task spec (None for a base, or a task this machine lacks)
    decoding: dict[str, Any] = field(default_factory=dict)

    @property
    def task_schema(self) -> dict[str, Any] | None:
        """The schema a version decodes under by default: its task's output schema."""
        return self.task.output_schema if self.task is not None else None

    @property
    def fingerprint(self) -> str:
        """``system_fingerprint``: what the answer depends on (content hash, or the base)."""
        return f"tl-{self.version.content_hash[:12]}" if self.version else f"tl-base-{self.base_id}"


class ServedModels:
    """Every base of the pool and the registered versions on them, resolved, verified and listed."""

    def __init__(
        self,
        pool: ModelPool,
        *,
        models: list[str] | None = None,
        alias_refresh_s: float = 1.0,
        metrics: ServeMetrics | None = None,
    ) -> None:
        self.pool = pool
        self.models = list(models or [])
        self.alias_refresh_s = alias_refresh_s
        self.metrics = metrics or ServeMetrics()
        self._immutable: dict[str, ModelVersionInfo] = {}  # "task@3" / "task@sha256:…" → version
        self._aliases: dict[str, tuple[float, ModelVersionInfo]] = {}  # "task@prod" → (read at, version)
        self._served: dict[str, ServedModel] = {}  # content hash → ready ServedModel
        self._bases: dict[str, Base] = {}  # a name a client used → the base it resolved to
        self._resolve_lock = threading.Lock()
        self._tasks: dict[str, Task | None] = {}

    def preload(self) -> list[ServedModel]:
        """Resolve, verify and export every ``--models`` entry now and load (pin) their bases, so a bad one
        fails at startup."""
        ready = [self.resolve(name) for name in self.models]
        for served in ready:
            self.pool.pin(self.base_of(served))
        return ready

    def resolve(self, name: str) -> ServedModel:
        """The model ``name`` names, verified and ready; OpenAIError 404/409 when it can't be served."""
        try:
            ref = parse_model_id(name)
        except TuneloopError as exc:
            raise model_not_found(name, exc.message) from None
        except (OSError, ValueError):  # probing the name as a path failed (e.g. a name too long for one)
            raise model_not_found(name, "not a model name this server knows") from None
        if isinstance(ref, EndpointRef):
            raise model_not_found(name, "this server serves its own models only, not upstream ones")
        if isinstance(ref, BaseRef):
            base = self._base(name)
            self._check_servable(name, base)
            return ServedModel(id=base.id, base_id=base.id, engine=self.pool.slot(base).backend_name)
        info = self._lookup_version(ref)
        with self._resolve_lock:
            served = self._served.get(info.content_hash)
        if served is None or served.id != info.id:
            served = self._prepare_version(info)
            with self._resolve_lock:
                self._served[info.content_hash] = served
        return served

    def base_of(self, served: ServedModel) -> Base:
        """The base a resolved model runs on."""
        return self._base(served.base_id)

    def _base(self, name: str) -> Base:
        with self._resolve_lock:
            cached = self._bases.get(name)
        if cached is not None:
            return cached
        from tuneloop.bases import resolve_base

        try:
            base = resolve_base(name)
        # A client's model name is any string; as a path it can fail in any way (no home directory
        # for "~x", a NUL byte, a name too long): each means "not a base this server has", a 404.
        except TuneloopError as exc:
            raise model_not_found(name, exc.message, exc.hint) from None
        except (OSError, RuntimeError, ValueError):
            raise model_not_found(name, "not a base this server has") from None
        with self._resolve_lock:
            self._bases[name] = base
        return base

    def _check_servable(self, name: str, base: Base) -> None:
        """A client may name the bases this machine lists (bundled, the HF cache), the bases of registered
        versions, and those the server was started with; not any file path on the server's disk."""
        if base.kind in ("bundled", "hf") or any(slot.id == base.id for slot in self.pool.slots()):
            return
        from tuneloop.registry.versions import list_versions

        if any(info.base_id == base.id for info in list_versions()):
            return
        raise model_not_found(
            name,
            "a path is served only when the server was started with it or a registered version is trained on it",
            "start tuneloop serve with --bases PATH",
        )

    def forget_base(self, base_id: str) -> None:
        """A base was (re)loaded: its versions are checked against its files again on their next request."""
        with self._resolve_lock:
            for key in [key for key, served in self._served.items() if served.base_id == base_id]:
                del self._served[key]

    def _lookup_version(self, ref: VersionRef) -> ModelVersionInfo:
        from tuneloop.registry.versions import resolve_version

        key = str(ref)
        now = time.monotonic()
        if ref.is_immutable:
            cached = self._immutable.get(key)
            if cached is not None:
                return cached
        else:
            entry = self._aliases.get(key)
            if entry is not None and now - entry[0] < self.alias_refresh_s:
                return entry[1]
        try:
            info = resolve_version(ref, verify=False)  # the files are verified when loaded (below)
        except TuneloopError as exc:
            raise model_not_found(key, exc.message, exc.hint) from None
        if ref.is_immutable:
            self._immutable[key] = info
        else:
            previous = self._aliases.get(key)
            if previous is not None and previous[1].id != info.id:
                log.info("alias %s moved: %s -> %s", key, previous[1].id, info.id)
            self._aliases[key] = (now, info)
        return info

    def _prepare_version(self, info: ModelVersionInfo) -> ServedModel:
        """Check a version's base is here with the weights it was trained on and its files are intact;
        export what its engine needs."""
        try:
            base = self._base(info.base_id)
        except OpenAIError as exc:
            raise model_not_found(info.id, f"its base {info.base_id} is not on this machine: {exc.message}") from None
        slot = self.pool.slot(base)
        if info.base_weights_hash and info.base_weights_hash != slot.weights_hash():
            raise integrity_error(
                info.id,
                f"its base {info.base_id} changed: the files at {base.path} hash to sha256:{slot.weights_hash()[:12]}, "
                f"and it was trained on sha256:{info.base_weights_hash[:12]}",
                "restore the base's original files (tuneloop bases show prints where they are), "
                "or retrain the version on this base",
            )
        self.verify(info)
        gguf_path = None
        if slot.backend_name == "llamacpp":
            from tuneloop.registry.exports import ensure_gguf_lora

            try:
                gguf_path = ensure_gguf_lora(info)
            except TuneloopError as exc:
                raise integrity_error(info.id, f"its adapter can't be exported for llama.cpp: {exc.message}") from None
        return ServedModel(
            id=info.id,
            base_id=base.id,
            engine=slot.backend_name,
            version=info,
            adapter=Adapter(
                id=info.id,
                peft_dir=info.adapter_path,
                gguf_path=gguf_path,
                content_hash=info.content_hash,
                prompt=TrainedPrompt.of(info),  # a distilled version is served with the prompt it was trained with
                # Every engine calls this right before it reads the adapter's files (first use, and again
                # after its LRU unloaded it), in the thread that loads them.
                before_load=functools.partial(self.verify, info),
            ),
            task=self._task(info.task),
            decoding=dict(info.decoding),
        )

    def verify(self, info: ModelVersionInfo) -> None:
        """Hash a version's files against its registered content hash; 409 when they differ."""
        from tuneloop.registry.versions import verify_version

        try:
            verify_version(info, check_base=False)  # the base is checked against the pool's files
        except TuneloopError as exc:
            log.error("refusing %s: %s", info.id, exc)
            raise integrity_error(info.id, exc.message, exc.hint) from None
        self.metrics.adapter_loads.labels(info.id).inc()

    def _task(self, task_name: str) -> Task | None:
        if task_name not in self._tasks:
            from tuneloop.task import load_task

            try:
                self._tasks[task_name] = load_task(task_name)
            except TuneloopError:
                log.warning("task %s has no spec here; its versions decode without a schema", task_name)
                self._tasks[task_name] = None
        return self._tasks[task_name]

    def list_models(self) -> list[dict[str, Any]]:
        """``/v1/models``: every base this machine has and every registered version on one of them, each
        with its state (hot, loading, warm, cold), base, license and content hash."""
        from tuneloop.bases import known_weights_hash, list_bases
        from tuneloop.registry.versions import aliases_of, list_versions

        bases: dict[str, Base] = {slot.id: slot.base for slot in self.pool.slots()}
        for row in list_bases():
            if row.available and row.id not in bases:
                try:
                    bases[row.id] = self._base(row.id)
                except OpenAIError:
                    continue
        versions = list_versions()
        for info in versions:
            if info.base_id not in bases:
                try:
                    bases[info.base_id] = self._base(info.base_id)
                except OpenAIError:
                    continue  # its base is not on this machine: not servable here
        slots = {base_id: self.pool.slot(base) for base_id, base in bases.items()}
        cards = []
        for base_id, base in bases.items():
            slot = slots[base_id]
            weights = known_weights_hash(base)  # never hashes gigabytes for a listing
            cards.append(
                {
                    "id": base_id,
                    "object": "model",
                    "created": _mtime(base),
                    "owned_by": "tuneloop",
                    "parent": None,
                    "base": base_id,
                    "state": slot.state if slot.state != "evicting" else "warm",
                    "license": base.license,
                    "license_id": base.license_id,
                    **({"commit": base.commit} if base.commit else {}),
                    "content_hash": f"sha256:{weights}" if weights else None,
                    "engine": slot.backend_name,
                    "memory_bytes": slot.footprint_bytes,
                    "pinned": slot.pinned,
                }
            )
        for info in versions:
            if info.base_id not in bases:
                continue
            slot = slots[info.base_id]
            cards.append(
                {
                    "id": info.id,
                    "object": "model",
                    "created": int(info.created_at.timestamp()) if info.created_at else 0,
                    "owned_by": "tuneloop",
                    "parent": info.base_id,
                    "root": info.hash_ref,
                    "aliases": [f"{info.task}@{alias}" for alias in aliases_of(info)],
                    "base": info.base_id,
                    "state": _version_state(slot, info.id),
                    "license": bases[info.base_id].license,
                    "license_id": bases[info.base_id].license_id,
                    "content_hash": f"sha256:{info.content_hash}",
                    "base_content_hash": f"sha256:{info.base_weights_hash}" if info.base_weights_hash else None,
                }
            )
        return cards


def _version_state(slot: BaseSlot, version_id: str) -> str:
    """A version is hot when its base is and its adapter is loaded; warm when one of them is ready."""
    if slot.state == "hot":
        loaded = getattr(slot.backend, "loaded_adapters", None)
        return "hot" if loaded is None or version_id in loaded else "warm"
    return "warm" if slot.state == "evicting" else slot.state


def _mtime(base: Base) -> int:
    try:
        return int(base.path.stat().st_mtime)
    except OSError:
        return 0

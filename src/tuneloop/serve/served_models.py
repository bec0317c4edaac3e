"""The models a server serves: which one a request names, whether its files can be trusted, the list.

The request side (``engine.py``) asks :meth:`ServedModels.resolve` for the model a request names and
gets a :class:`ServedModel`, ready for the backend; ``/v1/models`` is :meth:`ServedModels.list_models`.

- **Resolution.** ``task@3`` and ``task@sha256:…`` name immutable versions and are looked up once;
  ``task@prod`` is re-read from the store at most every ``alias_refresh_s`` (1 s by default), so
  ``tuneloop models promote``/``rollback`` reach a running server without a restart. A base name serves
  the bare base. Every response, log line and metric names the resolved version (``task@4``).
  ``--models`` restricts the server to those tasks (any of their versions) and the base.
- **Integrity.** Before a version's adapter is loaded into the backend (the first time, and again after
  the backend's LRU evicted it), its files are hashed and compared with the registered content hash; a
  tampered version is refused (409 ``model_integrity_error``) and nothing of it is loaded. A version
  trained on other weights of the base than the loaded ones is refused the same way.
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
from tuneloop.registry.ids import BaseRef, EndpointRef, VersionRef, parse_model_id
from tuneloop.registry.versions import ModelVersionInfo
from tuneloop.serve.backends import Adapter
from tuneloop.serve.errors import integrity_error, model_not_found
from tuneloop.serve.metrics import ServeMetrics
from tuneloop.task import Task

log = logging.getLogger("tuneloop.serve")


@dataclass(frozen=True)
class ServedModel:
    """A request's model after resolution: ``id`` is immutable (``task@4`` or the base id)."""

    id: str
    base_id: str
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
    """The base a server loaded and the registered versions on it, resolved, verified and listed.

    ``backend_name`` decides what a version's adapter needs (llama.cpp: its GGUF LoRA export);
    ``batching``: the backend runs concurrent calls and loads adapters from its own threads (when a batch
    forms, or when vLLM is first asked for one), so the hash check goes with the adapter
    (``Adapter.before_load``) instead of running before each generation (:meth:`verify_unloaded`).
    """

    def __init__(
        self,
        base: Base,
        *,
        backend_name: str,
        batching: bool = False,
        models: list[str] | None = None,
        alias_refresh_s: float = 1.0,
        metrics: ServeMetrics | None = None,
    ) -> None:
        self.base = base
        self.backend_name = backend_name
        self.batching = batching
        self.models = list(models or [])
        self.alias_refresh_s = alias_refresh_s
        self.metrics = metrics or ServeMetrics()
        # --models restricts the server to those tasks (any of their versions) and the base.
        self.allowed_tasks: set[str] | None = None
        if self.models:
            self.allowed_tasks = set()
            for name in self.models:
                ref = parse_model_id(name)
                if isinstance(ref, VersionRef):
                    self.allowed_tasks.add(ref.task)
        self._immutable: dict[str, ModelVersionInfo] = {}  # "task@3" / "task@sha256:…" → version
        self._aliases: dict[str, tuple[float, ModelVersionInfo]] = {}  # "task@prod" → (read at, version)
        self._served: dict[str, ServedModel] = {}  # content hash → ready ServedModel
        self._resolve_lock = threading.Lock()
        self._base_weights_hash: str | None = None
        self._tasks: dict[str, Task | None] = {}

    def preload(self) -> list[ServedModel]:
        """Resolve, verify and export every ``--models`` entry now, so a bad one fails at startup."""
        return [self.resolve(name) for name in self.models]

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
            return self._resolve_base(name)
        if self.allowed_tasks is not None and ref.task not in self.allowed_tasks:
            raise model_not_found(name, f"this server was started for {', '.join(sorted(self.allowed_tasks))}")
        info = self._lookup_version(ref)
        with self._resolve_lock:
            served = self._served.get(info.content_hash)
            if served is None or served.id != info.id:
                served = self._prepare_version(info)
                self._served[info.content_hash] = served
        return served

    def _resolve_base(self, name: str) -> ServedModel:
        if name != self.base.id:
            from tuneloop.bases import resolve_base

            try:
                same = resolve_base(name).id == self.base.id
            # A client's model name is any string; as a path it can fail in any way (no home directory
            # for "~x", a NUL byte, a name too long): each means "not this server's base", a 404.
            except (TuneloopError, OSError, RuntimeError, ValueError):
                same = False
            if not same:
                raise model_not_found(name, f"this server runs the base {self.base.id} and its fine-tunes")
        return ServedModel(id=self.base.id, base_id=self.base.id)

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
        """Check a version belongs on this base and its files are intact; export what the backend needs."""
        if info.base_id != self.base.id:
            raise model_not_found(info.id, f"it is a fine-tune of {info.base_id}, and this server runs {self.base.id}")
        if info.base_weights_hash and info.base_weights_hash != self._base_hash():
            raise integrity_error(
                info.id, f"it was trained on other weights of {info.base_id} than the ones this server loaded"
            )
        self.verify(info)
        gguf_path = None
        if self.backend_name == "llamacpp":
            from tuneloop.registry.exports import ensure_gguf_lora

            try:
                gguf_path = ensure_gguf_lora(info)
            except TuneloopError as exc:
                raise integrity_error(info.id, f"its adapter can't be exported for llama.cpp: {exc.message}") from None
        # A batching (concurrent) backend loads an adapter when it needs it, so it checks the files then (before_load);
        # the others are checked right before their one generation (verify_unloaded).
        before_load = functools.partial(self.verify, info) if self.batching else None
        return ServedModel(
            id=info.id,
            base_id=info.base_id,
            version=info,
            adapter=Adapter(
                id=info.id,
                peft_dir=info.adapter_path,
                gguf_path=gguf_path,
                content_hash=info.content_hash,
                before_load=before_load,
            ),
            task=self._task(info.task),
            decoding=dict(info.decoding),
        )

    def verify(self, info: ModelVersionInfo) -> None:
        """Hash a version's files against its registered content hash; 409 when they differ."""
        from tuneloop.registry.versions import verify_version

        try:
            verify_version(info, check_base=False)  # the base was checked once, against the loaded one
        except TuneloopError as exc:
            log.error("refusing %s: %s", info.id, exc)
            raise integrity_error(info.id, exc.message, exc.hint) from None
        self.metrics.adapter_loads.labels(info.id).inc()

    def verify_unloaded(self, served: ServedModel, loaded: list[str] | None) -> None:
        """Right before generating (in the worker): re-verify a version the backend doesn't hold
        (``loaded``: its loaded adapters, None when it doesn't say), since loading it reads its files again.
        A version whose adapter checks itself when loaded (``before_load``) is left to that."""
        if served.adapter is None or served.version is None or served.adapter.before_load is not None:
            return
        if loaded is not None and served.id not in loaded:
            self.verify(served.version)

    def _base_hash(self) -> str:
        if self._base_weights_hash is None:
            from tuneloop.bases import base_weights_hash

            self._base_weights_hash = base_weights_hash(self.base)
        return self._base_weights_hash

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
        """``/v1/models``: the base, and every registered version on it (with its aliases)."""
        from tuneloop.registry.versions import aliases_of, list_versions

        created = int(self.base.path.stat().st_mtime) if self.base.path.exists() else 0
        cards = [{"id": self.base.id, "object": "model", "created": created, "owned_by": "tuneloop", "parent": None}]
        for info in list_versions():
            if info.base_id != self.base.id:
                continue
            if self.allowed_tasks is not None and info.task not in self.allowed_tasks:
                continue
            cards.append(
                {
                    "id": info.id,
                    "object": "model",
                    "created": int(info.created_at.timestamp()) if info.created_at else 0,
                    "owned_by": "tuneloop",
                    "parent": info.base_id,
                    "root": info.hash_ref,
                    "aliases": [f"{info.task}@{alias}" for alias in aliases_of(info)],
                }
            )
        return cards

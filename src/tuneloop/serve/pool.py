"""The bases a server holds: each hot (in an engine), warm (prepared, its files in the page cache) or cold.

One ``tuneloop serve`` answers for every base and every registered version of any base. A request for a
version of a base that is not hot loads the base (a *lease* on its :class:`BaseSlot`), first evicting the
least recently used idle bases until the newcomer fits ``memory_budget``; bases named at startup
(``--models``, ``--base``) are pinned and never evicted. Loading happens outside the pool's lock, so
requests for hot bases go on while another base loads; requests for the base being loaded wait for it.

- **States.** *cold*: on disk only; *loading*; *hot*: an engine holds it; *warm*: it was hot (or was
  pre-warmed with ``--warm``) and its prepared files are in the page cache, so loading it again costs no
  disk reads and no conversion. Warm bases cost no budget: the kernel reclaims page cache when it must.
- **Memory.** A base's footprint is estimated before it loads (:func:`estimate_footprint`: its weight files
  as the engine holds them, plus the context's KV cache), since the point is to decide *before* loading
  whether it fits. The default budget is 80 % of the machine's memory (its cgroup limit when lower).
- **Fairness.** A base whose engine runs one generation at a time (llama.cpp; transformers with
  ``max_batch_size`` 1) gets a :class:`FairWorker`: one queue per model, served in turn, so a burst for one
  version waits behind itself, not in front of the others. A batching engine gets every request at once and
  schedules them itself.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tuneloop.bases import Base
from tuneloop.errors import TuneloopError
from tuneloop.protocol import OpenAIError
from tuneloop.serve.backends import Backend, BackendOptions, takes_concurrent_calls

log = logging.getLogger("tuneloop.serve")

State = Literal["cold", "loading", "hot", "evicting", "warm"]
BackendFactory = Callable[[str, Base, BackendOptions], Backend]
BUDGET_SHARE = 0.8  # of the machine's memory, when --memory-budget is not given
# The KV cache per context token and layer of a small model is kilobytes; this bounds it from above for the
# bases we list (1-8B with grouped-query attention) without reading each GGUF's metadata.
_KV_BYTES_PER_TOKEN = 160 * 1024


class FairWorker:
    """One thread that runs one base's generations one at a time, taking turns between models.

    Each model has its own FIFO queue; the worker takes the head of the first non-empty queue and moves that
    model to the back, so with requests for k models waiting, each gets every k-th turn."""

    def __init__(self, name: str) -> None:
        self._queues: OrderedDict[str, deque[tuple[Future[Any], Callable[[], Any]]]] = OrderedDict()
        self._ready = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, model: str, work: Callable[[], Any]) -> Future[Any]:
        future: Future[Any] = Future()
        with self._ready:
            if self._closed:
                raise RuntimeError("the worker is closed")
            self._queues.setdefault(model, deque()).append((future, work))
            self._ready.notify()
        return future

    def _next(self) -> tuple[Future[Any], Callable[[], Any]] | None:
        with self._ready:
            while not self._queues and not self._closed:
                self._ready.wait()
            if not self._queues:
                return None
            model, queue = next(iter(self._queues.items()))
            item = queue.popleft()
            if queue:
                self._queues.move_to_end(model)
            else:
                del self._queues[model]
            return item

    def _run(self) -> None:
        while (item := self._next()) is not None:
            future, work = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = work()
            except BaseException as exc:  # delivered to the caller, who decides
                future.set_exception(exc)
            else:
                future.set_result(result)

    def close(self) -> None:
        with self._ready:
            self._closed = True
            for queue in self._queues.values():
                for future, _ in queue:
                    future.cancel()
            self._queues.clear()
            self._ready.notify_all()
        self._thread.join(timeout=60)


class _ConcurrentWorker:
    """A batching engine's calls, each on its own thread: the engine gathers them into batches itself."""

    def __init__(self, name: str, size: int) -> None:
        self._executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix=name)

    def submit(self, model: str, work: Callable[[], Any]) -> Future[Any]:
        return self._executor.submit(work)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


@dataclass(eq=False)
class BaseSlot:
    """One base in the pool: its state, its engine when hot, and its bookkeeping."""

    base: Base
    backend_name: str
    options: BackendOptions
    footprint_bytes: int
    pinned: bool = False
    state: State = "cold"
    backend: Backend | None = None
    worker: FairWorker | _ConcurrentWorker | None = None
    in_flight: int = 0
    last_used: float = 0.0
    loads: int = 0
    last_load_s: float | None = None
    error: str | None = None  # why the last load failed

    @property
    def id(self) -> str:
        return self.base.id

    def weights_hash(self) -> str:
        """The base's weights sha256, as the files are now (cached per file version, bases/weights.py)."""
        from tuneloop.bases import base_weights_hash

        return base_weights_hash(self.base)

    def submit(self, model: str, work: Callable[[], Any]) -> Future[Any]:
        assert self.worker is not None, "a slot runs work only while hot (leased)"
        return self.worker.submit(model, work)


@dataclass(frozen=True)
class Lease:
    """A hot base held for one request: it is not evicted until the lease ends."""

    slot: BaseSlot
    load_s: float  # what this request waited for the base to load (0 when it was hot)

    @property
    def backend(self) -> Backend:
        assert self.slot.backend is not None
        return self.slot.backend


class ModelPool:
    """Every base the server has touched, loaded on demand under ``memory_budget`` bytes."""

    def __init__(
        self,
        *,
        backend_name: str,
        flags: dict[str, Any] | None = None,
        memory_budget: int | None = None,
        max_queue: int = 16,
        factory: BackendFactory | None = None,
        on_load: Callable[[BaseSlot, float], None] | None = None,
        on_evict: Callable[[BaseSlot], None] | None = None,
        wait_for_room_s: float = 120.0,
    ) -> None:
        from tuneloop.serve.backends import get_backend

        self.backend_name = backend_name
        self.flags = dict(flags or {})
        self.memory_budget = memory_budget if memory_budget is not None else default_memory_budget()
        self.max_queue = max_queue
        self._factory = factory or get_backend
        self.on_load = on_load
        self.on_evict = on_evict
        self._wait_for_room_s = wait_for_room_s
        self._slots: dict[str, BaseSlot] = {}
        self._changed = threading.Condition()

    # --- slots -------------------------------------------------------------------------------------

    def slot(self, base: Base) -> BaseSlot:
        """The slot of ``base`` (made cold on first sight)."""
        with self._changed:
            slot = self._slots.get(base.id)
            if slot is None:
                backend_name = engine_for(self.backend_name, base)
                options = _options(backend_name, self.flags)
                slot = BaseSlot(base, backend_name, options, estimate_footprint(base, backend_name, options))
                self._slots[base.id] = slot
            return slot

    def slots(self) -> list[BaseSlot]:
        with self._changed:
            return list(self._slots.values())

    def hot_bytes(self) -> int:
        with self._changed:
            return self._committed()

    def _committed(self) -> int:
        return sum(s.footprint_bytes for s in self._slots.values() if s.state in ("hot", "loading", "evicting"))

    def pin(self, base: Base) -> BaseSlot:
        """Load ``base`` now and never evict it (``--models``/``--base``); a failure raises here, at startup."""
        slot = self.slot(base)
        slot.pinned = True
        pinned = sum(s.footprint_bytes for s in self.slots() if s.pinned)
        if pinned > self.memory_budget:
            raise TuneloopError(
                f"the pinned bases need about {_gib(pinned)} and the memory budget is {_gib(self.memory_budget)}",
                where=f"--models / --base ({base.id})",
                hint="raise --memory-budget, or pin fewer bases (others load on demand)",
            )
        with self.lease(slot):
            pass
        return slot

    # --- leases ------------------------------------------------------------------------------------

    @contextmanager
    def lease(self, slot: BaseSlot) -> Iterator[Lease]:
        """Hold ``slot`` hot for one request, loading it (and evicting others) first when it isn't."""
        load_s = self._acquire(slot)
        try:
            yield Lease(slot, load_s)
        finally:
            with self._changed:
                slot.in_flight -= 1
                slot.last_used = time.monotonic()
                self._changed.notify_all()

    def _acquire(self, slot: BaseSlot) -> float:
        started = time.perf_counter()
        deadline = time.monotonic() + self._wait_for_room_s
        with self._changed:
            while True:
                if slot.state == "hot":
                    slot.in_flight += 1
                    slot.last_used = time.monotonic()
                    return 0.0
                if slot.state in ("loading", "evicting"):
                    self._changed.wait()  # another request is loading (or unloading) it: its load is ours
                    if slot.state == "hot":
                        slot.in_flight += 1
                        slot.last_used = time.monotonic()
                        return time.perf_counter() - started
                    continue
                victims = self._victims_for(slot)
                if victims is not None:
                    break
                if time.monotonic() >= deadline:
                    raise self._no_room(slot)
                self._changed.wait(timeout=max(0.01, deadline - time.monotonic()))
            previous: State = slot.state
            slot.state = "loading"
            for victim in victims:
                victim.state = "evicting"
        for victim in victims:
            self._evict(victim)
        try:
            log.info("loading base %s on %s (it was %s)", slot.id, slot.backend_name, previous)
            backend = self._load(slot)
        except BaseException as exc:
            with self._changed:
                slot.state = previous
                slot.error = str(exc)
                self._changed.notify_all()
            if isinstance(exc, OpenAIError):
                raise
            message = exc.message if isinstance(exc, TuneloopError) else f"{type(exc).__name__}: {exc}"
            raise OpenAIError(
                503, f"the base {slot.id} could not be loaded: {message}", code="model_load_failed", param="model"
            ) from None
        load_s = time.perf_counter() - started
        with self._changed:
            slot.backend = backend
            concurrent = takes_concurrent_calls(backend)
            name = f"tuneloop-{slot.id[-24:]}"
            slot.worker = _ConcurrentWorker(name, self.max_queue) if concurrent else FairWorker(name)
            slot.state = "hot"
            slot.error = None
            slot.loads += 1
            slot.last_load_s = load_s
            slot.in_flight += 1
            slot.last_used = time.monotonic()
            self._changed.notify_all()
        if self.on_load is not None:
            self.on_load(slot, load_s)
        return load_s

    def _victims_for(self, slot: BaseSlot) -> list[BaseSlot] | None:
        """The least recently used idle, unpinned hot bases whose eviction makes ``slot`` fit; None when
        it doesn't fit yet (bases in use, or loading); a 503 when it never can."""
        free = self.memory_budget - self._committed()
        if slot.footprint_bytes <= free:
            return []
        evictable = sorted(
            (s for s in self._slots.values() if s.state == "hot" and not s.pinned and s is not slot),
            key=lambda s: s.last_used,
        )
        ever_free = self.memory_budget - sum(
            s.footprint_bytes for s in self._slots.values() if s.pinned and s.state in ("hot", "loading")
        )
        if slot.footprint_bytes > ever_free:
            raise self._no_room(slot)
        victims: list[BaseSlot] = []
        for candidate in evictable:
            if candidate.in_flight:
                continue
            victims.append(candidate)
            free += candidate.footprint_bytes
            if slot.footprint_bytes <= free:
                return victims
        return None

    def _no_room(self, slot: BaseSlot) -> OpenAIError:
        pinned = [s.id for s in self._slots.values() if s.pinned]
        return OpenAIError(
            503,
            f"the base {slot.id} needs about {_gib(slot.footprint_bytes)} and the server's memory budget "
            f"({_gib(self.memory_budget)}) has no room for it"
            + (f" beside the pinned {', '.join(pinned)}" if pinned else "")
            + "; raise tuneloop serve's --memory-budget, or serve it from another server",
            code="memory_budget_exceeded",
            param="model",
        )

    def _load(self, slot: BaseSlot) -> Backend:
        return self._factory(slot.backend_name, slot.base, slot.options)

    def _evict(self, slot: BaseSlot) -> None:
        log.info("evicting base %s (least recently used) to make room", slot.id)
        worker, backend = slot.worker, slot.backend
        try:
            if worker is not None:
                worker.close()
            if backend is not None:
                backend.close()
        finally:
            with self._changed:
                slot.worker, slot.backend = None, None
                slot.state = "warm"
                self._changed.notify_all()
        if self.on_evict is not None:
            self.on_evict(slot)

    def warm(self, base: Base) -> BaseSlot:
        """Prepare ``base`` for a fast load without loading it: conversions made, files read into the page
        cache (``--warm``)."""
        slot = self.slot(base)
        for path in prepared_files(slot.base, slot.backend_name, slot.options):
            _read_ahead(path)
        with self._changed:
            if slot.state == "cold":
                slot.state = "warm"
        return slot

    def close(self) -> None:
        for slot in self.slots():
            if slot.state == "hot":
                with self._changed:
                    slot.state = "evicting"
                self._evict(slot)


# --- engines, footprints and budgets ---------------------------------------------------------------


def engine_for(backend_name: str, base: Base) -> str:
    """The engine a base runs on: the server's ``--backend`` when it can load the base; a base in HF
    format (no GGUF file) on a llama.cpp server runs on transformers."""
    if backend_name == "llamacpp" and base.gguf_path is None:
        return "transformers"
    return backend_name


def _options(backend_name: str, flags: dict[str, Any]) -> BackendOptions:
    from tuneloop.serve.backends import backend_options

    return backend_options(backend_name, flags, strict=False)


def prepared_files(base: Base, backend_name: str, options: BackendOptions) -> list[Path]:
    """The files an engine reads to load ``base`` (made now when missing: a conversion, a float rewrite)."""
    from tuneloop.bases import transformers_dir, weight_files

    if backend_name == "llamacpp":
        weights = getattr(options, "weights", "native")
        if weights != "native":
            from tuneloop.bases.widen import llamacpp_weights_path

            return [llamacpp_weights_path(base, weights)]
        return weight_files(base)
    if base.gguf_path is not None:
        folder = transformers_dir(base)
        return sorted(folder.glob("*.safetensors"))
    return weight_files(base)


def estimate_footprint(base: Base, backend_name: str, options: BackendOptions) -> int:
    """Bytes ``base`` holds once loaded on ``backend_name``: its weights as that engine keeps them, plus a
    context's KV cache. An estimate made before loading, from file sizes only."""
    from tuneloop.bases import weight_files

    try:
        files = sum(path.stat().st_size for path in weight_files(base))
    except (OSError, TuneloopError):
        files = 0
    n_ctx = int(getattr(options, "n_ctx", 2048) or 2048)
    if backend_name == "llamacpp":
        factor = {"native": 1.0, "f16": 3.6, "f32": 7.2}.get(getattr(options, "weights", "native"), 1.0)
        return int(files * factor) + n_ctx * _KV_BYTES_PER_TOKEN
    if backend_name == "transformers":
        on_gpu = str(getattr(options, "device", "cpu")) != "cpu"
        # A ~4.5-bit GGUF is dequantized to fp32 on CPU (bf16 on a GPU); 16-bit checkpoints double in fp32.
        factors = {(True, False): 7.2, (True, True): 3.6, (False, False): 2.0, (False, True): 1.0}
        factor = factors[(base.gguf_path is not None, on_gpu)]
        return int(files * factor) + n_ctx * _KV_BYTES_PER_TOKEN
    return files  # vLLM runs in its own process, with its own (GPU) memory


def default_memory_budget() -> int:
    """80 % of the machine's memory, or of this cgroup's limit when that is lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return int(total * BUDGET_SHARE)


def parse_bytes(text: str) -> int:
    """``--memory-budget``: ``12GiB``, ``800MB``, ``5e9`` or a plain number of bytes."""
    units = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2}
    units |= {"g": 1000**3, "gb": 1000**3, "gib": 1024**3, "t": 1000**4, "tb": 1000**4, "tib": 1024**4}
    cleaned = text.strip().lower().replace(" ", "")
    number = cleaned.rstrip("kmgtib")
    unit = cleaned[len(number) :]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in units or value <= 0:
        raise TuneloopError(
            f"not an amount of memory: {text!r}", where="--memory-budget", hint="e.g. 12GiB, 800MB or 5000000000"
        )
    return int(value * units[unit])


def _read_ahead(path: Path) -> None:
    """Ask the kernel to read ``path`` into the page cache (what makes a base warm)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
    except (AttributeError, OSError):  # not on every platform; warm then only means "prepared"
        pass
    finally:
        os.close(fd)


def _gib(size: int) -> str:
    return f"{size / 1024**3:.2f} GiB"

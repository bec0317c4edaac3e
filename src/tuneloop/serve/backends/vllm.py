"""vLLM on GPUs: launch vLLM's own OpenAI server with LoRA enabled, map our version ids onto it, route to it.

- **Launcher.** ``python -m vllm.entrypoints.openai.api_server --model <base> --enable-lora
  --max-loras N --max-lora-rank R --tensor-parallel-size T --pipeline-parallel-size P`` on a loopback
  port, with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` so adapters can be added while it runs.
- **Resolver.** vLLM names an adapter by the name it was loaded under; ours is the resolved version id
  (``task@4``). Before the first request for a version, ``VllmAdapterResolver`` POSTs
  ``/v1/load_lora_adapter {"lora_name": "task@4", "lora_path": <the version's PEFT folder>}``; later
  requests just send ``model="task@4"``. vLLM keeps at most ``--max-loras`` on the GPU per batch and swaps
  the rest in from CPU memory itself; batches mixing versions are vLLM's job.
- **Routing.** ``VllmBackend`` (``get_backend("vllm", base, VllmOptions(...))``) implements the
  ``Backend`` interface over HTTP, so the engine (resolution, verification, queue, validation, metrics)
  is the same as for the CPU backends. A request's JSON schema goes to vLLM's guided decoding
  (``response_format`` ``json_schema``).

Without vLLM installed this module still imports; starting the backend raises a TuneloopError saying
how to install it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx

from tuneloop.bases import Base
from tuneloop.errors import TuneloopError
from tuneloop.serve.backends.base import Adapter, Generation, GenerationParams, Message
from tuneloop.serve.backends.options import VllmOptions

VLLM_MODULE = "vllm.entrypoints.openai.api_server"


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def require_vllm() -> None:
    if not vllm_installed():
        raise TuneloopError(
            "the vllm backend needs vLLM, which is not installed",
            where="--backend vllm",
            hint="on a machine with an NVIDIA GPU: pip install 'tuneloop[vllm]'; on CPU use --backend llamacpp",
        )


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
) -> list[str]:
    """The command line that starts vLLM's OpenAI server with runtime-loadable LoRA adapters."""
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
    return command + list(extra_args or [])


def vllm_environment(base_env: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base_env is None else base_env)
    env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"  # lets /v1/load_lora_adapter add versions while serving
    return env


class VllmAdapterResolver:
    """Maps our version ids to adapters loaded into a running vLLM server, loading each on first use."""

    def __init__(self, client: httpx.Client) -> None:
        self._client = client
        self._loaded: dict[str, Path] = {}
        self._lock = threading.Lock()

    def payload(self, adapter: Adapter) -> dict[str, str]:
        return {"lora_name": adapter.id, "lora_path": str(adapter.peft_dir)}

    def ensure(self, adapter: Adapter) -> str:
        """The model name to send for ``adapter`` (its version id), loaded into vLLM if it isn't yet."""
        with self._lock:
            if self._loaded.get(adapter.id) == adapter.peft_dir:
                return adapter.id
            response = self._client.post("/v1/load_lora_adapter", json=self.payload(adapter))
            if response.status_code >= 400 and "already" not in response.text:
                raise TuneloopError(f"vLLM refused the adapter: {response.text[:300]}", where=adapter.id)
            self._loaded[adapter.id] = adapter.peft_dir
            return adapter.id

    @property
    def loaded(self) -> list[str]:
        return list(self._loaded)


class VllmBackend:
    """The ``Backend`` interface over a vLLM server this process starts (and stops on ``close``)."""

    name: ClassVar[str] = "vllm"

    def __init__(self, base: Base, options: VllmOptions | None = None) -> None:
        require_vllm()
        options = options or VllmOptions()
        self.base = base
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
        )
        self._process = subprocess.Popen(self.command, env=vllm_environment())
        self._client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600)
        self.resolver = VllmAdapterResolver(self._client)
        self._wait_ready(options.startup_timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise TuneloopError(f"vLLM exited with status {self._process.returncode}", where=" ".join(self.command))
            try:
                if self._client.get("/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(1)
        self.close()
        raise TuneloopError(f"vLLM did not become ready in {timeout_s:.0f} s", where=" ".join(self.command))

    @property
    def loaded_adapters(self) -> list[str]:
        return self.resolver.loaded

    def _body(self, messages: list[Message], params: GenerationParams, adapter: Adapter | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.resolver.ensure(adapter) if adapter else self.base.id,
            "messages": messages,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if params.stop:
            body["stop"] = params.stop
        if params.seed is not None:
            body["seed"] = params.seed
        if params.json_schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": params.json_schema, "strict": True},
            }
        return body

    def generate(
        self, messages: list[Message], params: GenerationParams | None = None, adapter: Adapter | None = None
    ) -> Generation:
        params = params or GenerationParams()
        started = time.perf_counter()
        response = self._client.post("/v1/chat/completions", json=self._body(messages, params, adapter))
        if response.status_code >= 400:
            raise TuneloopError(f"vLLM answered {response.status_code}: {response.text[:300]}", where="vllm")
        payload = response.json()
        choice, usage = payload["choices"][0], payload.get("usage") or {}
        return Generation(
            text=choice["message"].get("content") or "",
            finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
            prompt_tokens=usage.get("prompt_tokens", 0),
            completion_tokens=usage.get("completion_tokens", 0),
            latency_ms=(time.perf_counter() - started) * 1000,
            ttft_ms=None,
        )

    def stream(
        self, messages: list[Message], params: GenerationParams | None = None, adapter: Adapter | None = None
    ) -> Iterator[str]:
        yield from self.stream_generation(messages, params, adapter)

    def stream_generation(
        self, messages: list[Message], params: GenerationParams | None = None, adapter: Adapter | None = None
    ) -> Generator[str, None, Generation]:
        params = params or GenerationParams()
        body = {**self._body(messages, params, adapter), "stream": True, "stream_options": {"include_usage": True}}
        started = time.perf_counter()
        first: float | None = None
        parts: list[str] = []
        finish, usage = "stop", {}
        with self._client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code >= 400:
                raise TuneloopError(f"vLLM answered {response.status_code}", where="vllm")
            for line in response.iter_lines():
                if not line.startswith("data:") or line.strip() == "data: [DONE]":
                    continue
                chunk = json.loads(line[5:])
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or []:
                    delta = (choice.get("delta") or {}).get("content")
                    if delta:
                        first = first or time.perf_counter()
                        parts.append(delta)
                        yield delta
                    if choice.get("finish_reason"):
                        finish = "length" if choice["finish_reason"] == "length" else "stop"
        finished = time.perf_counter()
        return Generation(
            text="".join(parts),
            finish_reason=finish,  # type: ignore[arg-type]
            prompt_tokens=usage.get("prompt_tokens", 0),
            completion_tokens=usage.get("completion_tokens", len(parts)),
            latency_ms=(finished - started) * 1000,
            ttft_ms=None if first is None else (first - started) * 1000,
        )

    def close(self) -> None:
        self._client.close()
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()

"""Each backend's own settings, one frozen dataclass per backend: what its constructor takes.

They live apart from the backends, so naming, checking and building options (the serve and eval
commands, ``engine_identity``) never imports an engine (llama.cpp, torch, vLLM).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class LlamaCppOptions:
    """llama.cpp: context window, threads (None: half the cores; ``"auto"``: measured at load, see
    serve/backends/threads.py), adapters kept loaded (LRU), and the weights: the GGUF as it is
    (``native``) or its float rewrite (``f16``/``f32``, bases/widen.py).
    ``grammar_first``: greedy structured output checks the argmax against the grammar first (False masks
    the whole vocabulary every step, as llama.cpp's grammar sampler does; benchmarks compare).
    ``prefix_cache_mb``: memory for the saved KV of prompt heads per version (0: off;
    serve/backends/prompt_cache.py); answers are the same bits with it. ``forced_tokens``: append the
    tokens a grammar forces in one step (``serve.grammar.ForcedTokens``): faster, but a step over several
    tokens rounds differently and can flip a near tie, so it is off unless asked for."""

    n_ctx: int = 2048
    n_threads: int | Literal["auto"] | None = None
    max_adapters: int = 8
    grammar_first: bool = True
    weights: str = "native"
    cache_dir: Path | None = None
    prefix_cache_mb: int = 256
    forced_tokens: bool = False


@dataclass(frozen=True)
class TransformersOptions:
    """transformers: device and dtype (None: the base's own), adapters kept loaded (LRU), and batching:
    at most ``max_batch_size`` requests decoded together, gathered for up to ``batch_wait_ms``."""

    device: str = "cpu"
    dtype: torch.dtype | None = None
    cache_dir: Path | None = None
    max_adapters: int = 8
    max_batch_size: int = 8
    batch_wait_ms: float = 5.0


@dataclass(frozen=True)
class VllmOptions:
    """vLLM: adapters kept loaded (LRU; also vLLM's ``--max-loras``, adapters per batch), their largest rank,
    the parallelism, extra arguments for vLLM's server, how long its start may take, the interpreter that
    runs it (None: found, see serve/backends/vllm.py) and where its output goes (None: a file under
    ``$TUNELOOP_HOME/logs``)."""

    max_adapters: int = 8
    max_lora_rank: int = 64
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    extra_args: tuple[str, ...] = ()
    startup_timeout_s: float = 600
    python: str | None = None
    log_path: Path | None = None


BackendOptions = LlamaCppOptions | TransformersOptions | VllmOptions


def parse_threads(value: str | int | None, where: str = "--threads") -> int | Literal["auto"] | None:
    """``--threads``: a positive count, or ``auto`` (measured at load, serve/backends/threads.py)."""
    if value is None or value == "auto":
        return value  # type: ignore[return-value]
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        from tuneloop.errors import TuneloopError

        raise TuneloopError(f"threads must be a positive number or auto, not {value!r}", where=where)
    return count

"""Loading a base into an engine: HF transformers (training, reference serving) or llama.cpp (CPU serving).

A GGUF base is converted to HF format once (dequantized to float32, saved as safetensors with its
tokenizer and chat template) and cached under ``<cache_dir>/bases/<id>/<weights-hash-prefix>``; later
loads read the safetensors in seconds instead of re-dequantizing the GGUF (~20 s for the bundled model).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.bases.resolve import Base, slug
from tuneloop.bases.weights import base_weights_hash
from tuneloop.config import get_settings
from tuneloop.errors import TuneloopError

if TYPE_CHECKING:
    import llama_cpp
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# Written last into a finished conversion: a folder without it is not a conversion.
CONVERSION_MARKER = "tuneloop-conversion.json"

# Chat templates end each turn with one of these; generation must stop there, so it is the eos token.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")

ProgressCallback = Callable[[str], None]


def conversion_dir(base: Base, *, cache_dir: Path | None = None) -> Path:
    """Where the HF-format conversion of a GGUF base lives (whether or not it exists yet)."""
    if base.gguf_path is None:
        raise ValueError(f"{base.id} is already in HF format; it needs no conversion")
    root = (cache_dir or get_settings().cache_dir) / "bases"
    name = base_weights_hash(base, cache_dir=cache_dir)[:16]
    if base.chat_template is not None:
        # The catalog's template is saved with the tokenizer: another template is another conversion.
        name += "-t" + hashlib.sha256(base.chat_template.encode()).hexdigest()[:8]
    return root / slug(base.id) / name


def is_conversion_cached(base: Base, *, cache_dir: Path | None = None) -> bool:
    """True when ``transformers_dir`` will not need to convert (HF bases never do)."""
    if base.gguf_path is None:
        return True
    return (conversion_dir(base, cache_dir=cache_dir) / CONVERSION_MARKER).is_file()


def transformers_dir(base: Base, *, cache_dir: Path | None = None, progress: ProgressCallback | None = None) -> Path:
    """A folder that ``from_pretrained`` loads: the base's own HF folder, or its cached conversion.

    Converts a GGUF base on first use; training code loads from the returned folder.
    """
    if base.hf_dir is not None:
        return base.hf_dir
    target = conversion_dir(base, cache_dir=cache_dir)
    if (target / CONVERSION_MARKER).is_file():
        return target
    weights_sha256 = base_weights_hash(base, cache_dir=cache_dir)
    _convert_gguf(base, target, weights_sha256, progress or (lambda _message: None))
    return target


def load_transformers(
    base: Base,
    dtype: torch.dtype | None = None,
    *,
    device: str = "cpu",
    cache_dir: Path | None = None,
    progress: ProgressCallback | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) in eval mode; dtype defaults to float32 (the only fast choice on CPU)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = transformers_dir(base, cache_dir=cache_dir, progress=progress)
    if progress:
        progress(f"loading {base.id} with transformers")
    with _quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        # No Hub kernels (transformers 5.25's default on a GPU fetches them from the Hub: a network call).
        model = AutoModelForCausalLM.from_pretrained(
            directory, dtype=dtype or torch.float32, local_files_only=True, use_kernels=False
        )
    align_special_tokens(model, tokenizer)
    model.to(device)
    model.eval()
    return model, tokenizer


def load_llamacpp(
    base: Base,
    n_ctx: int = 2048,
    n_threads: int | None = None,
    *,
    weights: str = "native",
    cache_dir: Path | None = None,
    **kwargs: Any,
) -> llama_cpp.Llama:
    """A ``llama_cpp.Llama`` over the base's GGUF file, with llama.cpp's logging kept quiet.

    ``weights``: ``native`` loads the file as it is; ``f16`` / ``f32`` load its float rewrite, made once
    (``bases/widen.py``), which agrees with the transformers backend where quantized matmuls do not.
    ``n_threads`` defaults to llama-cpp-python's choice, half the logical cores (the physical ones on
    most CPUs). Not all of them: llama.cpp threads spin at barriers, so a thread more than there are
    free cores collapses throughput (measured on 2 shared cores: 2 threads 3-95 tok/s depending on the
    neighbours' load, 1 thread a steady 51-68). Other keyword arguments go to ``Llama`` unchanged.
    """
    from tuneloop.bases.widen import llamacpp_weights_path

    path = llamacpp_weights_path(base, weights, cache_dir=cache_dir)
    try:
        import llama_cpp
    except ImportError as exc:
        raise TuneloopError(
            f"llama-cpp-python is not importable ({exc})",
            where=base.id,
            hint="pip install llama-cpp-python",
        ) from None
    if n_threads is not None:
        kwargs.setdefault("n_threads_batch", n_threads)
    try:
        return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=n_threads, verbose=False, **kwargs)
    except ValueError as exc:  # llama-cpp-python reports unreadable or unsupported files as ValueError
        raise TuneloopError(
            f"llama.cpp could not load the GGUF file: {exc}",
            where=str(path),
            hint="check the file is a complete GGUF model supported by this llama-cpp-python version",
        ) from None


def end_of_turn_token(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The token the chat template closes each turn with, when it has one in the vocabulary."""
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    if not template:
        return None
    for token in END_OF_TURN_TOKENS:
        # convert_tokens_to_ids, not get_vocab(): that builds a dict of the whole vocabulary on each call,
        # which made tokenizing 1,000 training rows take minutes.
        if token in template and _in_vocabulary(tokenizer, token):
            return token
    return None


def _in_vocabulary(tokenizer: PreTrainedTokenizerBase, token: str) -> bool:
    token_id = tokenizer.convert_tokens_to_ids(token)  # the unknown token's id when it is not there
    return token_id is not None and tokenizer.convert_ids_to_tokens(token_id) == token


def align_special_tokens(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Make eos the end-of-turn token and make sure there is a pad token, in tokenizer and model configs.

    Why: an instruct model that stops only at the pretraining eos runs on past the end of its answer;
    batched generation and training need a pad token. Attention masks keep padding out of both.
    """
    eot = end_of_turn_token(tokenizer)
    if eot is not None and tokenizer.eos_token != eot:
        tokenizer.eos_token = eot
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    for config in (model.config, model.generation_config):
        if config is None:
            continue
        config.eos_token_id = tokenizer.eos_token_id
        config.pad_token_id = tokenizer.pad_token_id


def _convert_gguf(base: Base, target: Path, weights_sha256: str, progress: ProgressCallback) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert base.gguf_path is not None
    started = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build in a sibling temp folder and rename it into place: the rename is atomic, so an
    # interrupted conversion leaves no folder that looks finished.
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.partial-"))
    staging.chmod(0o755)  # mkdtemp makes it owner-only; the cache is as readable as any other file here
    try:
        source_dir, filename = base.gguf_path.parent, base.gguf_path.name
        with _quiet_transformers():
            progress(f"reading the tokenizer from {filename}")
            tokenizer = AutoTokenizer.from_pretrained(source_dir, gguf_file=filename, local_files_only=True)
            if base.chat_template is not None:
                tokenizer.chat_template = base.chat_template  # the catalog's, for a GGUF that carries none
            progress(f"dequantizing {filename} to float32")
            # The GGUF reader draws its own tqdm bar on stderr, which no transformers setting turns off.
            with contextlib.redirect_stderr(io.StringIO()):
                model = AutoModelForCausalLM.from_pretrained(
                    source_dir, gguf_file=filename, local_files_only=True, **_dequantize_kwargs()
                )
            _drop_gguf_quantizer(model)
            align_special_tokens(model, tokenizer)
            progress("saving safetensors")
            model.save_pretrained(staging, safe_serialization=True)
            tokenizer.save_pretrained(staging)
        for file in staging.iterdir():
            file.chmod(0o644)  # some writers create owner-only files; the cache is not secret
        _check_tokenizer_survived(tokenizer, staging)
        _write_marker(base, staging, weights_sha256, seconds=time.perf_counter() - started)
        try:
            staging.rename(target)
        except OSError:
            if not (target / CONVERSION_MARKER).is_file():
                # A leftover without a marker (not ours to trust): replace it.
                shutil.rmtree(target, ignore_errors=True)
                staging.rename(target)
            # else another process finished the same conversion first; keep theirs.
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    progress(f"converted {base.id} in {time.perf_counter() - started:.1f} s")


def _dequantize_kwargs() -> dict[str, Any]:
    """Ask for plain float weights: newer transformers may otherwise keep GGUF blocks packed in memory."""
    try:
        from transformers import GgufConfig
    except ImportError:  # older transformers always dequantize GGUF files
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def _drop_gguf_quantizer(model: PreTrainedModel) -> None:
    """Forget that the weights came from a GGUF file, so ``save_pretrained`` writes plain safetensors.

    The weights are dense float tensors by now; refuse if any is still packed.
    """
    import torch

    packed = [name for name, tensor in model.state_dict().items() if not torch.is_floating_point(tensor)]
    if packed:
        raise RuntimeError(f"GGUF weights were not dequantized: {packed[:3]}")
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    elif hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _check_tokenizer_survived(original: PreTrainedTokenizerBase, saved_dir: Path) -> None:
    """Reload the saved tokenizer: the chat template and special tokens must round-trip."""
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(saved_dir, local_files_only=True)
    for attribute in ("chat_template", "eos_token", "pad_token", "bos_token"):
        if getattr(reloaded, attribute) != getattr(original, attribute):
            raise RuntimeError(f"the converted tokenizer lost its {attribute} on save")
    probe = [{"role": "user", "content": "hi"}]
    if reloaded.apply_chat_template(probe, tokenize=False) != original.apply_chat_template(probe, tokenize=False):
        raise RuntimeError("the converted tokenizer renders chats differently after save")


def _write_marker(base: Base, folder: Path, weights_sha256: str, *, seconds: float) -> None:
    import torch
    import transformers

    info = {
        "base_id": base.id,
        "source": str(base.gguf_path),
        "weights_sha256": weights_sha256,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "converted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(seconds, 2),
    }
    (folder / CONVERSION_MARKER).write_text(json.dumps(info, indent=2) + "\n")


def conversion_info(base: Base, *, cache_dir: Path | None = None) -> dict[str, Any] | None:
    """What the marker of a cached conversion records, or None when there is none."""
    if base.gguf_path is None:
        return None
    marker = conversion_dir(base, cache_dir=cache_dir) / CONVERSION_MARKER
    try:
        return json.loads(marker.read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' info/warnings and tqdm bars for the duration (callers show their own progress)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()

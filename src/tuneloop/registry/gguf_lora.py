"""Export a PEFT LoRA adapter to a GGUF LoRA file that llama.cpp applies over the base GGUF.

llama.cpp computes ``W x + scale * (alpha / rank) * B (A x)`` with the adapter's tensors named after the
base tensor they modify (``blk.0.attn_q.weight.lora_a`` / ``.lora_b``). Three details matter for the result
to equal PEFT's:

- names: the ``gguf`` package's tensor-name map of the base's llama.cpp architecture turns HF names
  (``model.layers.0.self_attn.q_proj``) into GGUF ones (``blk.0.attn_q``), so we map no names by hand;
- Llama's q and k projections are stored permuted in GGUF (rotary halves interleaved); since the update is
  ``B @ A``, permuting the rows of ``B`` permutes the update the same way. Only Llama-style architectures
  are permuted (llama.cpp's ``convert_hf_to_gguf.py`` does it in ``LlamaModel.modify_tensors``); Gemma 3's
  linear weights are stored as HF has them;
- scaling: PEFT scales by ``lora_alpha / r`` (or ``/ sqrt(r)`` with rsLoRA); we write the alpha that makes
  llama.cpp's ``alpha / rank`` equal that scale.

``ARCHITECTURES`` lists the architectures this is verified for (tests/test_gguf_lora.py compares llama.cpp's
logit change with PEFT's on each bundled base); any other is refused, naming the fix.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import load_file

from tuneloop.errors import TuneloopError


@dataclass(frozen=True)
class Architecture:
    """How llama.cpp stores a model type: its GGUF architecture, and whether q/k rows are permuted."""

    gguf_arch: gguf.MODEL_ARCH
    permute_qk: bool


# HF ``model_type`` (or a GGUF file's ``general.architecture``, which base_hf_config passes for GGUF bases)
# → llama.cpp's layout. Gemma 3's text model is ``gemma3_text`` in HF, ``gemma3`` in GGUF.
ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture(gguf.MODEL_ARCH.LLAMA, permute_qk=True),
    "mistral": Architecture(gguf.MODEL_ARCH.LLAMA, permute_qk=True),
    "gemma3": Architecture(gguf.MODEL_ARCH.GEMMA3, permute_qk=False),
    "gemma3_text": Architecture(gguf.MODEL_ARCH.GEMMA3, permute_qk=False),
}
_PEFT_PREFIX = "base_model.model."


def architecture_of(base_config: dict, *, where: str | None = None) -> Architecture:
    """The layout of the base's model type, or a TuneloopError naming it, the supported ones and the fix."""
    model_type = base_config.get("model_type")
    found = ARCHITECTURES.get(model_type) if isinstance(model_type, str) else None
    if found is None:
        raise TuneloopError(
            f"the llama.cpp LoRA export supports {', '.join(ARCHITECTURES)} models, and this base is "
            f"{model_type!r}: serve this version with the transformers backend",
            where=where,
            hint="serve it with --backend transformers (the PEFT adapter needs no export)",
        )
    return found


def _permute_rows(weight: np.ndarray, n_head: int) -> np.ndarray:
    """The row permutation llama.cpp's converter applies to Llama q/k weights (and so to LoRA B)."""
    rows = weight.shape[0]
    return weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def export_gguf_lora(adapter_dir: Path, base_config: dict, out_path: Path) -> Path:
    """Write ``adapter_dir`` (a PEFT LoRA folder) as a GGUF LoRA at ``out_path``, atomically.

    ``base_config`` is the base model's HF ``config.json`` (architecture, layer and head counts).
    """
    adapter_dir = Path(adapter_dir)
    config_path, weights_path = adapter_dir / "adapter_config.json", adapter_dir / "adapter_model.safetensors"
    for needed in (config_path, weights_path):
        if not needed.is_file():
            raise TuneloopError(f"{needed.name} is missing", where=str(adapter_dir), hint="export a PEFT LoRA adapter")
    adapter_config = json.loads(config_path.read_text())
    if adapter_config.get("peft_type", "LORA") != "LORA":
        raise TuneloopError(f"only LoRA adapters can be exported, not {adapter_config.get('peft_type')}")
    if adapter_config.get("use_dora"):
        raise TuneloopError("DoRA adapters cannot be applied by llama.cpp", where=str(config_path))
    architecture = architecture_of(base_config, where=str(adapter_dir))
    n_layers = base_config["num_hidden_layers"]
    n_head = base_config["num_attention_heads"]
    n_head_kv = base_config.get("num_key_value_heads") or n_head
    rank = int(adapter_config["r"])
    alpha = float(adapter_config.get("lora_alpha", rank))
    if adapter_config.get("use_rslora"):
        alpha = alpha * math.sqrt(rank)  # llama.cpp divides by rank; rsLoRA divides by sqrt(rank)
    rank_pattern = adapter_config.get("rank_pattern") or {}
    alpha_pattern = adapter_config.get("alpha_pattern") or {}
    if rank_pattern or alpha_pattern:
        raise TuneloopError("per-module rank or alpha patterns cannot be expressed in one GGUF alpha")

    names = gguf.get_tensor_name_map(architecture.gguf_arch, n_layers)
    tensors = load_file(str(weights_path))
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        name = key.removeprefix(_PEFT_PREFIX)
        for part, label in ((".lora_A.weight", "a"), (".lora_B.weight", "b")):
            if name.endswith(part):
                pairs.setdefault(name.removesuffix(part), {})[label] = value.astype(np.float32)
                break
        else:
            raise TuneloopError(
                f"adapter tensor {key} is not a LoRA A/B matrix (trained embeddings or modules_to_save?)",
                where=str(weights_path),
                hint="train with LoRA on linear layers only to serve with llama.cpp",
            )

    writer_dir = out_path.parent
    writer_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out_path.name}.", dir=writer_dir)
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp_name, gguf.MODEL_ARCH_NAMES[architecture.gguf_arch])
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        for module, ab in sorted(pairs.items()):
            if set(ab) != {"a", "b"}:
                raise TuneloopError(f"{module} has only one of lora_A/lora_B", where=str(weights_path))
            gguf_name = names.get_name(module + ".weight", try_suffixes=(".weight",))
            if gguf_name is None:
                raise TuneloopError(f"no GGUF tensor corresponds to {module}", where=str(weights_path))
            lora_a, lora_b = ab["a"], ab["b"]
            if architecture.permute_qk and module.endswith("q_proj"):
                lora_b = _permute_rows(lora_b, n_head)
            elif architecture.permute_qk and module.endswith("k_proj"):
                lora_b = _permute_rows(lora_b, n_head_kv)
            writer.add_tensor(f"{gguf_name}.lora_a", np.ascontiguousarray(lora_a))
            writer.add_tensor(f"{gguf_name}.lora_b", np.ascontiguousarray(lora_b))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp_name, out_path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return out_path

"""A quantized GGUF base rewritten with float weights, for llama.cpp to serve the exact weights.

llama.cpp multiplies quantized weights (Q4_1 for the bundled base) with activations it quantizes to 8
bits on the fly, while transformers runs the same dequantized weights in float32. The two engines then
disagree wherever the model's top two tokens are close. A float GGUF of the same weights takes the
activation rounding out: ``f32`` holds the dequantized weights exactly (what transformers runs), ``f16``
rounds them to half precision at half the size.

The rewrite is made once per (weights hash, precision), beside the HF conversion, built under a
temporary name and renamed into place, so an interrupted one leaves nothing that looks finished. The
base's identity does not change: it is still the hash of the file the user has, and the rewrite is keyed
by it (``conversion_dir``), so a changed file gets a new rewrite.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from tuneloop.bases.loading import ProgressCallback, conversion_dir
from tuneloop.bases.resolve import Base
from tuneloop.errors import TuneloopError

LLAMA_WEIGHTS = ("native", "f16", "f32")


def check_llamacpp_weights(base: Base, weights: str) -> None:
    """Refuse, before anything loads, weights llama.cpp cannot run ``base`` on."""
    if weights not in LLAMA_WEIGHTS:
        raise TuneloopError(
            f"unknown llama.cpp weights {weights!r}",
            where="--llamacpp-weights",
            hint="use one of: " + ", ".join(LLAMA_WEIGHTS),
        )
    if base.gguf_path is None:
        raise TuneloopError(
            "the llama.cpp backend needs a GGUF file, and this base is in HF format only",
            where=base.id,
            hint="use the transformers backend, or pass the path of a .gguf export of this model "
            "(GGUF export of full bases is not part of tuneloop)",
        )


def llamacpp_weights_path(
    base: Base, weights: str = "native", *, cache_dir: Path | None = None, progress: ProgressCallback | None = None
) -> Path:
    """The GGUF file llama.cpp loads for ``base``: the file itself (``native``) or its float rewrite."""
    check_llamacpp_weights(base, weights)
    assert base.gguf_path is not None  # checked above
    if weights == "native":
        return base.gguf_path
    # Beside the HF conversion's folder, not in it: that folder is only ever renamed into place whole.
    conversion = conversion_dir(base, cache_dir=cache_dir)
    target = conversion.parent / f"{conversion.name}.{weights}.gguf"
    if not target.is_file():
        _rewrite(base.gguf_path, target, weights, progress or (lambda _message: None))
    return target


def _rewrite(source: Path, target: Path, weights: str, progress: ProgressCallback) -> None:
    import gguf
    import numpy as np

    started = time.perf_counter()
    progress(f"rewriting {source.name} with {weights} weights for llama.cpp (once)")
    reader = gguf.GGUFReader(source)
    float_types = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16)
    architecture = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(staging, architecture)
        for name, field in reader.fields.items():
            # The writer adds the header fields and the architecture itself.
            if name.startswith("GGUF.") or name == gguf.Keys.General.ARCHITECTURE:
                continue
            if name == gguf.Keys.General.FILE_TYPE:
                file_type = gguf.LlamaFileType.ALL_F32 if weights == "f32" else gguf.LlamaFileType.MOSTLY_F16
                writer.add_file_type(file_type)
                continue
            value_type = field.types[0]
            sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(name, field.contents(), value_type, sub_type=sub_type)
        for tensor in reader.tensors:
            data = tensor.data
            if tensor.tensor_type not in float_types:
                data = gguf.quants.dequantize(data, tensor.tensor_type)
            data = np.asarray(data, dtype=np.float32)
            # Norms and other vectors stay float32, as llama.cpp's own converter keeps them.
            if weights == "f16" and data.ndim >= 2:
                data = data.astype(np.float16)
            writer.add_tensor(tensor.name, np.ascontiguousarray(data))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.chmod(staging, 0o644)
        os.replace(staging, target)
    finally:
        Path(staging).unlink(missing_ok=True)
    progress(f"wrote {target.name} in {time.perf_counter() - started:.1f} s")

"""PEFT LoRA → GGUF LoRA: llama.cpp applies the exported adapter as PEFT does."""

from __future__ import annotations

import ctypes
import json
from pathlib import Path

import numpy as np
import pytest

from tuneloop.bases import DEFAULT_BASE, load_llamacpp, load_transformers, resolve_base, transformers_dir
from tuneloop.errors import TuneloopError
from tuneloop.registry.gguf_lora import export_gguf_lora

CHAT = [
    {"role": "system", "content": "Answer with JSON only."},
    {"role": "user", "content": "Extract the amount: Your payoff is $1,234.56 as of May 3."},
]
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _random_adapter(model, folder: Path, *, rank: int = 8, alpha: int = 16, strength: float = 0.6, **extra):
    """A LoRA whose A and B are both random (PEFT's default leaves B at zero: no effect to compare)."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    extra.setdefault("target_modules", ALL_LINEAR)
    config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=False, task_type="CAUSAL_LM", **extra)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_" in name:
                parameter.mul_(strength)
    peft_model.save_pretrained(folder)
    return peft_model


def _llamacpp_logits(llm, adapter, token_ids: list[int]) -> np.ndarray:
    import llama_cpp

    llm.reset()
    if adapter is None:
        llama_cpp.llama_set_adapters_lora(llm.ctx, None, 0, None)
    else:
        adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(adapter)
        llama_cpp.llama_set_adapters_lora(llm.ctx, adapters, 1, (ctypes.c_float * 1)(1.0))
    llm.eval(token_ids)
    return np.array(llm.scores[: len(token_ids)])


@pytest.mark.slow
@pytest.mark.parametrize("rslora", [False, True])
def test_llamacpp_applies_the_exported_adapter_as_peft_does(converted_home: Path, tmp_path: Path, rslora) -> None:
    import llama_cpp
    import torch

    base = resolve_base(DEFAULT_BASE)
    model, tokenizer = load_transformers(base, cache_dir=converted_home / "cache")
    peft_model = _random_adapter(model, tmp_path / "adapter", use_rslora=rslora)
    base_config = json.loads((transformers_dir(base, cache_dir=converted_home / "cache") / "config.json").read_text())
    gguf_path = export_gguf_lora(tmp_path / "adapter", base_config, tmp_path / "adapter.gguf")

    token_ids = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True, return_dict=True)
    token_ids = list(token_ids["input_ids"])
    with torch.no_grad():
        hf_tuned = peft_model(torch.tensor([token_ids])).logits[0].numpy()
        with peft_model.disable_adapter():
            hf_base = peft_model(torch.tensor([token_ids])).logits[0].numpy()

    llm = load_llamacpp(base, logits_all=True)
    try:
        adapter = llama_cpp.llama_adapter_lora_init(llm.model, str(gguf_path).encode())
        assert adapter, "llama.cpp refused the exported adapter"
        cpp_tuned = _llamacpp_logits(llm, adapter, token_ids)
        cpp_base = _llamacpp_logits(llm, None, token_ids)
    finally:
        llm.close()

    hf_delta, cpp_delta = (hf_tuned - hf_base).ravel(), (cpp_tuned - cpp_base).ravel()
    assert np.abs(hf_delta).max() > 3, "the adapter must change the logits for the comparison to mean anything"
    # llama.cpp runs the base in 4-bit with 8-bit activations, so equality is approximate; a wrong name map,
    # scale or q/k permutation drops the correlation far below this (0.85 without the permutation).
    assert np.corrcoef(hf_delta, cpp_delta)[0, 1] > 0.95
    assert (hf_tuned.argmax(-1) == cpp_tuned.argmax(-1)).mean() >= 0.9


@pytest.mark.slow
def test_llamacpp_applies_an_exported_gemma3_adapter_as_peft_does(
    gemma_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Gemma 3 (the second bundled base): its GGUF keeps HF's q/k row order, so nothing is permuted.

    Measured on this base: all linear layers, correlation 0.998 (0.94 with Llama's permutation wrongly
    applied); q/k alone, where the permutation is all that differs, 0.98 (0.43 permuted)."""
    import llama_cpp
    import torch

    from conftest import GEMMA

    monkeypatch.setenv("TUNELOOP_HOME", str(gemma_home))  # where the session assembled and converted it
    cache = gemma_home / "cache"
    base = resolve_base(GEMMA)
    model, tokenizer = load_transformers(base, cache_dir=cache)
    base_config = json.loads((transformers_dir(base, cache_dir=cache) / "config.json").read_text())
    assert base_config["model_type"] == "gemma3_text"
    token_ids = list(
        tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    )
    llm = load_llamacpp(base, logits_all=True)
    try:
        cpp_base = _llamacpp_logits(llm, None, token_ids)
        for modules, least in ((ALL_LINEAR, 0.99), (["q_proj", "k_proj"], 0.95)):
            peft_model = _random_adapter(model, tmp_path / modules[0], target_modules=modules)
            gguf_path = export_gguf_lora(tmp_path / modules[0], base_config, tmp_path / f"{modules[0]}.gguf")
            with torch.no_grad():
                hf_tuned = peft_model(torch.tensor([token_ids])).logits[0].numpy()
                with peft_model.disable_adapter():
                    hf_base = peft_model(torch.tensor([token_ids])).logits[0].numpy()
            model = peft_model.unload()  # the bare base again, for the next adapter
            adapter = llama_cpp.llama_adapter_lora_init(llm.model, str(gguf_path).encode())
            assert adapter, "llama.cpp refused the exported adapter"
            cpp_tuned = _llamacpp_logits(llm, adapter, token_ids)
            hf_delta, cpp_delta = (hf_tuned - hf_base).ravel(), (cpp_tuned - cpp_base).ravel()
            assert np.abs(hf_delta).max() > 3, modules
            assert np.corrcoef(hf_delta, cpp_delta)[0, 1] > least, modules
    finally:
        llm.close()


def _write_adapter(folder: Path, config: dict, tensors: dict) -> Path:
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps(config))
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    return folder


LLAMA = {"model_type": "llama", "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1}
A = np.zeros((2, 8), np.float32)
B = np.zeros((8, 2), np.float32)


def test_an_architecture_without_a_known_gguf_layout_is_refused_naming_it_and_the_fix(tmp_path: Path) -> None:
    folder = _write_adapter(tmp_path / "adapter", {"peft_type": "LORA", "r": 2}, {"x.lora_A.weight": A})
    with pytest.raises(TuneloopError) as caught:
        export_gguf_lora(folder, {**LLAMA, "model_type": "qwen2"}, tmp_path / "out.gguf")
    assert "'qwen2'" in caught.value.message and "llama, mistral, gemma3" in caught.value.message
    assert caught.value.hint is not None and "--backend transformers" in caught.value.hint


@pytest.mark.parametrize(
    ("config", "tensors", "base", "words"),
    [
        ({"peft_type": "LORA", "r": 2, "use_dora": True}, {}, LLAMA, "DoRA"),
        ({"peft_type": "IA3"}, {}, LLAMA, "only LoRA"),
        ({"peft_type": "LORA", "r": 2}, {}, {**LLAMA, "model_type": "gpt2"}, "transformers backend"),
        (
            {"peft_type": "LORA", "r": 2},
            {"base_model.model.model.embed_tokens.weight": A},
            LLAMA,
            "not a LoRA A/B matrix",
        ),
        (
            {"peft_type": "LORA", "r": 2},
            {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": A},
            LLAMA,
            "only one of",
        ),
    ],
)
def test_adapters_llamacpp_cannot_apply_are_refused(tmp_path: Path, config, tensors, base, words) -> None:
    folder = _write_adapter(tmp_path / "adapter", config, tensors or {"x.lora_A.weight": A})
    out = tmp_path / "out.gguf"
    with pytest.raises(TuneloopError) as caught:
        export_gguf_lora(folder, base, out)
    assert words in str(caught.value)
    assert not out.exists() and list(tmp_path.glob(".out.gguf.*")) == []  # nothing half-written


def test_missing_adapter_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(TuneloopError) as caught:
        export_gguf_lora(tmp_path, LLAMA, tmp_path / "out.gguf")
    assert "adapter_config.json is missing" in str(caught.value)

"""Many fine-tunes over one base: adapters chosen per request, in an LRU, on both CPU backends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneloop.bases import DEFAULT_BASE, load_transformers, resolve_base, transformers_dir
from tuneloop.errors import TuneloopError
from tuneloop.registry.gguf_lora import export_gguf_lora
from tuneloop.serve.backends import Adapter, GenerationParams, backend_options, get_backend

pytestmark = pytest.mark.slow

CHAT = [
    {"role": "system", "content": "Answer with JSON only."},
    {"role": "user", "content": "Extract the amount: Your payoff is $1,234.56 as of May 3."},
]
PARAMS = GenerationParams(max_tokens=12)


@pytest.fixture(scope="module")
def adapters(converted_home: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Adapter]:
    """Two different random LoRAs on the bundled base, as PEFT folders with their GGUF exports."""
    import torch
    from peft import LoraConfig, get_peft_model

    cache = converted_home / "cache"
    base = resolve_base(DEFAULT_BASE)
    base_config = json.loads((transformers_dir(base, cache_dir=cache) / "config.json").read_text())
    folder = tmp_path_factory.mktemp("adapters")
    made = []
    for seed in (1, 2):
        model, _ = load_transformers(base, cache_dir=cache)
        torch.manual_seed(seed)
        config = LoraConfig(
            r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False
        )
        peft_model = get_peft_model(model, config)
        with torch.no_grad():
            for name, parameter in peft_model.named_parameters():
                if "lora_" in name:
                    parameter.mul_(1.5)
        peft_dir = folder / f"v{seed}"
        peft_model.save_pretrained(peft_dir)
        gguf = export_gguf_lora(peft_dir, base_config, folder / f"v{seed}.gguf")
        made.append(Adapter(id=f"demo@{seed}", peft_dir=peft_dir, gguf_path=gguf))
    return made


@pytest.fixture(params=["llamacpp", "transformers"])
def backend(request: pytest.FixtureRequest, converted_home: Path):
    options = {"cache_dir": converted_home / "cache"} if request.param == "transformers" else {}
    backend = get_backend(
        request.param, resolve_base(DEFAULT_BASE), backend_options(request.param, {**options, "max_adapters": 2})
    )
    yield backend
    backend.close()


def test_each_request_gets_its_own_adapter_and_switching_back_is_exact(backend, adapters) -> None:
    first, second = adapters
    base_text = backend.generate(CHAT, PARAMS).text
    first_text = backend.generate(CHAT, PARAMS, adapter=first).text
    second_text = backend.generate(CHAT, PARAMS, adapter=second).text
    assert len({base_text, first_text, second_text}) == 3, (base_text, first_text, second_text)
    # Back and forth: a cached prefix or a left-on adapter from the previous request would show here.
    assert backend.generate(CHAT, PARAMS).text == base_text
    assert backend.generate(CHAT, PARAMS, adapter=first).text == first_text
    assert backend.generate(CHAT, PARAMS, adapter=first).text == first_text
    assert "".join(backend.stream(CHAT, PARAMS, adapter=second)) == second_text


def test_adapters_live_in_a_bounded_lru(backend, adapters, tmp_path: Path) -> None:
    first, second = adapters
    third = Adapter(id="demo@3", peft_dir=first.peft_dir, gguf_path=first.gguf_path)  # same files, new version
    for adapter in (first, second, first, third):
        backend.generate(CHAT, GenerationParams(max_tokens=1), adapter=adapter)
    assert backend.loaded_adapters == ["demo@1", "demo@3"]  # demo@2 was least recently used


def test_a_missing_adapter_is_a_clear_error(backend, tmp_path: Path) -> None:
    missing = Adapter(id="demo@9", peft_dir=tmp_path / "nope", gguf_path=tmp_path / "nope.gguf")
    with pytest.raises(TuneloopError) as caught:
        backend.generate(CHAT, PARAMS, adapter=missing)
    assert "demo@9" in str(caught.value)

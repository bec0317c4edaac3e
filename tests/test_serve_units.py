"""Serve pieces without a model: grammars, validation after decoding, GGUF export cache, vLLM launch."""

from __future__ import annotations

from pathlib import Path

import pytest

from test_serve import TASK, register_random_version
from tuneloop.errors import TuneloopError
from tuneloop.serve.backends.vllm import (
    VllmAdapterResolver,
    require_vllm,
    vllm_command,
    vllm_environment,
    vllm_installed,
)
from tuneloop.serve.grammar import gbnf_is_strict, json_schema_gbnf, llama_grammar, validate_answer
from tuneloop.task import load_task


def test_the_task_schema_becomes_a_strict_grammar_in_schema_order() -> None:
    gbnf = json_schema_gbnf(load_task(TASK).output_schema)
    assert gbnf_is_strict(gbnf)
    root = next(line for line in gbnf.splitlines() if line.startswith("root ::="))
    assert root.index("payoff-amount") < root.index("escrow-balance") < root.index("servicer")
    # nullable fields keep their format and pattern (split into anyOf before converting)
    assert "date-string" in gbnf and "[0-9]" in gbnf
    assert llama_grammar(load_task(TASK).output_schema) is llama_grammar(load_task(TASK).output_schema)  # cached


def test_validation_after_decoding_reports_every_kind_of_violation() -> None:
    schema = load_task(TASK).output_schema
    good = (
        '{"payoff_amount": 1.5, "escrow_balance": null, "next_due_date": "2025-06-01", '
        '"interest_rate": 6.1, "account_last4": "1234", "servicer": "Acme"}'
    )
    assert validate_answer(good, schema).valid
    truncated = validate_answer(good[:20], schema)
    assert not truncated.valid and "not valid JSON" in truncated.errors[0]
    wrong = validate_answer(good.replace('"1234"', '"12345"').replace("2025-06-01", "2025-13-45"), schema)
    assert not wrong.valid and {e.split(":")[0] for e in wrong.errors} == {"account_last4", "next_due_date"}


def test_unconvertible_schemas_are_refused_with_the_parameter_named() -> None:
    with pytest.raises(TuneloopError) as caught:
        json_schema_gbnf({"$ref": "https://example.com/elsewhere.json"})
    assert "response_format.json_schema.schema" in str(caught.value)


def test_gguf_lora_export_is_cached_and_rebuilt_when_the_cache_is_damaged(tmp_path: Path) -> None:
    from tuneloop.registry.exports import ensure_gguf_lora

    info = register_random_version(tmp_path, 5, layers=2)
    path = ensure_gguf_lora(info)
    assert path.name == f"{info.content_hash}.gguf"
    modified = path.stat().st_mtime_ns
    assert ensure_gguf_lora(info).stat().st_mtime_ns == modified  # cached
    path.write_bytes(b"damaged")
    assert ensure_gguf_lora(info).read_bytes()[:4] == b"GGUF"  # exported again


def test_vllm_command_line_enables_lora_and_passes_parallelism_through() -> None:
    command = vllm_command(
        "/models/base", port=8123, served_name="base", max_loras=4, tensor_parallel_size=2, pipeline_parallel_size=3
    )
    joined = " ".join(command)
    assert "-m vllm.entrypoints.openai.api_server" in joined
    assert "--model /models/base" in joined and "--port 8123" in joined and "--enable-lora" in command
    assert "--max-loras 4" in joined and "--served-model-name base" in joined
    assert "--tensor-parallel-size 2" in joined and "--pipeline-parallel-size 3" in joined
    assert vllm_environment({})["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"


def test_the_vllm_resolver_loads_a_version_under_its_id(tmp_path: Path) -> None:
    import httpx

    from tuneloop.serve.backends import Adapter

    resolver = VllmAdapterResolver(httpx.Client(base_url="http://127.0.0.1:9"))
    adapter = Adapter(id=f"{TASK}@4", peft_dir=tmp_path / "4")
    assert resolver.payload(adapter) == {"lora_name": f"{TASK}@4", "lora_path": str(tmp_path / "4")}


@pytest.mark.skipif(vllm_installed(), reason="vLLM is installed here")
def test_without_vllm_the_backend_says_how_to_install_it() -> None:
    from tuneloop.serve.engine import build_engine

    with pytest.raises(TuneloopError) as caught:
        require_vllm()
    assert "pip install 'tuneloop[vllm]'" in str(caught.value)
    with pytest.raises(TuneloopError, match="vLLM, which is not installed"):
        build_engine(backend="vllm")

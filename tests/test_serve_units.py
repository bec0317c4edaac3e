"""Serve pieces without a model: grammars, validation after decoding, GGUF export cache, vLLM launch."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import httpx
import pytest

from test_serve import TASK, register_random_version
from tuneloop.errors import TuneloopError
from tuneloop.serve.backends.vllm import (
    VLLM_PYTHON_ENV,
    VllmAdapters,
    adapter_name,
    cpu_thread_binding,
    find_vllm_python,
    log_tail,
    probe_vllm,
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
    assert "--dtype" not in command  # on a GPU vLLM's defaults stand
    # compact JSON under a schema: llguidance without free whitespace (vLLM reads it from its server config)
    assert json.loads(command[command.index("--structured-outputs-config") + 1]) == {
        "backend": "guidance",
        "disable_any_whitespace": True,
    }
    own = vllm_command("/models/base", port=1, extra_args=['--structured-outputs-config={"backend": "xgrammar"}'])
    assert own.count("--structured-outputs-config") == 0 and own[-1].endswith('"xgrammar"}')
    assert vllm_environment({})["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"


def test_vllm_on_cpu_gets_float32_threads_and_a_kv_cache_unless_the_user_set_them() -> None:
    command = vllm_command("/models/base", port=1, on_cpu=True, python="/venv/bin/python")
    assert command[0] == "/venv/bin/python" and command[command.index("--dtype") + 1] == "float32"
    chosen = vllm_command("/models/base", port=1, on_cpu=True, extra_args=["--dtype=bfloat16"])
    assert "float32" not in chosen and chosen[-1] == "--dtype=bfloat16"
    env = vllm_environment({}, on_cpu=True)
    cpus = sorted(os.sched_getaffinity(0))
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == ",".join(map(str, cpus)) and int(env["VLLM_CPU_KVCACHE_SPACE"]) >= 1
    mine = vllm_environment({"VLLM_CPU_KVCACHE_SPACE": "9", "VLLM_CPU_OMP_THREADS_BIND": "0"}, on_cpu=True)
    assert mine["VLLM_CPU_KVCACHE_SPACE"] == "9" and mine["VLLM_CPU_OMP_THREADS_BIND"] == "0"
    assert "VLLM_CPU_KVCACHE_SPACE" not in vllm_environment({}, on_cpu=False)
    assert cpu_thread_binding([0, 1, 2, 3, 4], 2) == "0,1,2|3,4"
    with pytest.raises(TuneloopError, match="can't be split"):
        cpu_thread_binding([0], 2)


def test_vllm_is_found_by_option_then_environment_then_the_checkout_s_venv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interpreter(folder: Path) -> Path:
        path = folder / "bin" / "python"
        path.parent.mkdir(parents=True)
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
        return path

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(VLLM_PYTHON_ENV, raising=False)
    assert find_vllm_python() is None and not vllm_installed()
    with pytest.raises(TuneloopError) as caught:
        require_vllm()
    assert "make vllm" in str(caught.value) and "pip install vllm" in str(caught.value)
    local = interpreter(tmp_path / ".venv-vllm")
    assert find_vllm_python() == str(local)
    from_env = interpreter(tmp_path / "env")
    monkeypatch.setenv(VLLM_PYTHON_ENV, str(from_env))
    assert require_vllm() == str(from_env)
    option = interpreter(tmp_path / "option")
    assert require_vllm(str(option)) == str(option)
    with pytest.raises(TuneloopError) as caught:
        require_vllm(str(tmp_path / "nowhere" / "python"))
    assert caught.value.where == "--vllm-python" and "not an executable" in caught.value.message


def test_an_interpreter_without_vllm_is_refused_by_name() -> None:
    with pytest.raises(TuneloopError, match="cannot import vllm") as caught:
        probe_vllm(sys.executable)
    assert "make vllm" in str(caught.value)


def test_without_vllm_the_backend_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tuneloop.serve.engine import build_engine

    monkeypatch.chdir(tmp_path)  # no .venv-vllm here
    monkeypatch.delenv(VLLM_PYTHON_ENV, raising=False)
    if vllm_installed():
        pytest.skip("this Python imports vllm itself")
    with pytest.raises(TuneloopError, match="vLLM, which is not installed"):
        build_engine(backend="vllm")


def test_vllm_names_an_adapter_by_its_content(tmp_path: Path) -> None:
    from test_serve import write_random_lora
    from tuneloop.serve.backends import Adapter

    registered = Adapter(id=f"{TASK}@4", peft_dir=tmp_path / "4", content_hash="ab" * 32)
    assert adapter_name(registered) == "tl-" + "ab" * 32
    adapters = VllmAdapters(httpx.Client(base_url="http://127.0.0.1:9"), max_adapters=2)
    assert adapters.payload(registered) == {"lora_name": "tl-" + "ab" * 32, "lora_path": str(tmp_path / "4")}
    folder = write_random_lora(tmp_path / "loose", 1, layers=1)
    loose = Adapter(id="loose", peft_dir=folder)  # not from the registry: named by its files
    before = adapter_name(loose)
    assert before == adapter_name(loose) and before.startswith("tl-")
    write_random_lora(folder, 2, layers=1)
    assert adapter_name(loose) != before


def test_the_end_of_vllm_s_log_goes_into_errors(tmp_path: Path) -> None:
    log = tmp_path / "vllm.log"
    log.write_text("".join(f"line {n}\n" for n in range(100)))
    assert log_tail(log, 3) == "line 97\nline 98\nline 99"
    assert log_tail(tmp_path / "missing.log") == ""

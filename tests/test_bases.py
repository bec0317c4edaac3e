"""Base models: name resolution, weights hash, the cached GGUF → transformers conversion, the CLI."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

import tuneloop.bases.loading as loading
import tuneloop.bases.weights as weights
from tuneloop.bases import (
    CONVERSION_MARKER,
    DEFAULT_BASE,
    Base,
    base_weights_hash,
    is_conversion_cached,
    list_bases,
    load_llamacpp,
    load_transformers,
    resolve_base,
    transformers_dir,
)
from tuneloop.errors import TuneloopError


def save_tiny_chat_model(folder: Path) -> Path:
    """A 1-layer tiny Llama whose tokenizer's eos is the pretraining ``<|endoftext|>`` and which has no pad
    token, like many HF chat models: loading must make ``<|im_end|>`` the eos and add a pad token."""
    from tuneloop.testing.fake_hub import save_tiny_chat_model as save

    return save(folder, eos_token="<|endoftext|>", pad_token=None, hidden_size=16, layers=1)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_chat_model(tmp_path_factory.mktemp("tiny-llama"))


# --- resolving names -------------------------------------------------------------------------------


def test_bundled_name_resolves_to_the_gguf_in_its_package() -> None:
    base = resolve_base("smollm2-135m-instruct")
    assert base.kind == "bundled"
    assert base.id == "smollm2-135m-instruct"
    assert base.gguf_path is not None and base.gguf_path.is_file()
    assert base.gguf_path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert base.hf_dir is None
    assert base.license == "Apache-2.0"


def test_a_gguf_file_path_resolves_as_a_local_base() -> None:
    bundled = resolve_base(DEFAULT_BASE)
    base = resolve_base(str(bundled.gguf_path))
    assert (base.kind, base.format, base.gguf_path) == ("local", "gguf", bundled.gguf_path)
    assert base.id == str(bundled.gguf_path)


def test_an_hf_folder_resolves_as_a_local_base(tiny_model_dir: Path) -> None:
    base = resolve_base(str(tiny_model_dir))
    assert (base.kind, base.format, base.hf_dir, base.gguf_path) == ("local", "hf", tiny_model_dir, None)
    assert "LlamaForCausalLM" in base.description
    assert transformers_dir(base) == tiny_model_dir  # HF format needs no conversion
    assert is_conversion_cached(base)


def test_an_hf_name_resolves_from_the_local_cache_without_network(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    # The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<commit>/...}
    repo = tmp_path / "hub" / "models--tiny-org--tiny-chat"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in tiny_model_dir.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    (snapshot / "README.md").write_text("---\nlicense: mit\n---\n# tiny\n")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    base = resolve_base("hf:tiny-org/tiny-chat")
    assert (base.id, base.kind, base.hf_dir, base.license) == ("hf:tiny-org/tiny-chat", "hf", snapshot, "mit")
    listed = {info.id: info for info in list_bases()}
    assert listed["hf:tiny-org/tiny-chat"].available
    assert listed[DEFAULT_BASE].kind == "bundled"


def test_an_hf_name_not_in_the_cache_says_how_to_get_it() -> None:
    with pytest.raises(TuneloopError) as caught:
        resolve_base("hf:tuneloop-tests/not-downloaded-anywhere")
    error = caught.value
    assert "not in the local Hugging Face cache" in error.message
    assert error.where == "hf:tuneloop-tests/not-downloaded-anywhere"
    assert error.hint is not None and "hf download tuneloop-tests/not-downloaded-anywhere" in error.hint


def test_an_unknown_name_lists_the_known_bases() -> None:
    with pytest.raises(TuneloopError) as caught:
        resolve_base("smollm2")
    error = caught.value
    assert "unknown base model 'smollm2'" in error.message
    assert error.hint is not None
    assert "did you mean 'smollm2-135m-instruct'" in error.hint
    assert "hf:<org>/<name>" in error.hint


def test_paths_that_are_not_models_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(TuneloopError, match="no such file or folder"):
        resolve_base(str(tmp_path / "missing"))
    with pytest.raises(TuneloopError, match="neither an HF model"):
        resolve_base(str(tmp_path))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(TuneloopError, match=r"must be a \.gguf file"):
        resolve_base(str(tmp_path / "weights.bin"))


# --- weights hash ----------------------------------------------------------------------------------


def test_weights_hash_is_the_files_sha256_computed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    base = resolve_base(str(gguf))
    expected = hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert base_weights_hash(base, cache_dir=tmp_path / "cache") == expected
    assert (tmp_path / "cache" / "bases" / "weights-sha256.json").is_file()

    # A new process would find the digest on disk: forget the in-memory copy and forbid re-reading.
    monkeypatch.setattr(weights, "_memo", {})
    monkeypatch.setattr(weights, "_stream_sha256", lambda path: pytest.fail(f"re-hashed {path}"))
    assert base_weights_hash(base, cache_dir=tmp_path / "cache") == expected

    # Rewriting the file changes (size, mtime), so it is hashed again.
    monkeypatch.undo()
    gguf.write_bytes(b"GGUF other weights")
    os.utime(gguf, ns=(1, 1))
    assert base_weights_hash(base, cache_dir=tmp_path / "cache") == hashlib.sha256(b"GGUF other weights").hexdigest()


def test_weights_hash_of_a_sharded_hf_model_covers_every_shard(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "sharded"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    (folder / "model-00001-of-00002.safetensors").write_bytes(b"one")
    (folder / "model-00002-of-00002.safetensors").write_bytes(b"two")
    before = base_weights_hash(resolve_base(str(folder)), cache_dir=tmp_path / "cache")
    (folder / "model-00002-of-00002.safetensors").write_bytes(b"TWO")
    after = base_weights_hash(resolve_base(str(folder)), cache_dir=tmp_path / "cache")
    assert before != after and len(after) == 64


# --- loading ---------------------------------------------------------------------------------------


def test_an_hf_folder_loads_with_end_of_turn_as_eos_and_a_pad_token(tiny_model_dir: Path) -> None:
    model, tokenizer = load_transformers(resolve_base(str(tiny_model_dir)))
    assert tokenizer.eos_token == "<|im_end|>"  # the folder said <|endoftext|>: generation would run on
    assert tokenizer.pad_token is not None
    assert model.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    assert not model.training


def test_llamacpp_refuses_a_base_without_gguf(tiny_model_dir: Path) -> None:
    with pytest.raises(TuneloopError, match="needs a GGUF file"):
        load_llamacpp(resolve_base(str(tiny_model_dir)))


def test_an_interrupted_conversion_leaves_nothing_behind(tmp_path: Path) -> None:
    base = resolve_base(DEFAULT_BASE)

    def interrupt(message: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        transformers_dir(base, cache_dir=tmp_path, progress=interrupt)
    base_folder = tmp_path / "bases" / DEFAULT_BASE
    assert list(base_folder.iterdir()) == []  # no staging folder, no half-written conversion
    assert not is_conversion_cached(base, cache_dir=tmp_path)


@pytest.mark.slow
def test_the_conversion_keeps_chat_template_and_special_tokens(converted_home: Path) -> None:
    base = resolve_base(DEFAULT_BASE)
    folder = transformers_dir(base, cache_dir=converted_home / "cache")
    assert (folder / CONVERSION_MARKER).is_file()
    assert folder.parent.name == DEFAULT_BASE
    assert folder.name == base_weights_hash(base, cache_dir=converted_home / "cache")[:16]
    assert "quantization_config" not in (folder / "config.json").read_text()

    model, tokenizer = load_transformers(base, cache_dir=converted_home / "cache")
    assert (tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token) == (
        "<|im_end|>",
        "<|im_end|>",
        "<|im_start|>",
    )
    rendered = tokenizer.apply_chat_template(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert rendered == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    assert next(model.parameters()).dtype.is_floating_point
    assert model.config.num_hidden_layers == 30  # the real 135M model, not a stand-in


@pytest.mark.slow
def test_a_cached_conversion_is_reused_not_redone(converted_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = resolve_base(DEFAULT_BASE)
    cache_dir = converted_home / "cache"
    folder = transformers_dir(base, cache_dir=cache_dir)
    before = {file.name: file.stat().st_mtime_ns for file in folder.iterdir()}

    monkeypatch.setattr(loading, "_convert_gguf", lambda *args: pytest.fail("converted again"))
    assert is_conversion_cached(base, cache_dir=cache_dir)
    assert transformers_dir(base, cache_dir=cache_dir) == folder
    load_transformers(base, cache_dir=cache_dir)
    assert {file.name: file.stat().st_mtime_ns for file in folder.iterdir()} == before
    # One conversion, no leftovers (llama.cpp's float rewrites of the GGUF may lie beside it: bases/widen.py).
    assert [path.name for path in folder.parent.iterdir() if not path.name.endswith(".gguf")] == [folder.name]


# --- CLI -------------------------------------------------------------------------------------------


def test_cli_bases_list_shows_the_bundled_base() -> None:
    from tuneloop.cli.main import app

    result = CliRunner().invoke(app, ["bases", "list", "--no-hf-cache"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "smollm2-135m-instruct" in result.output
    assert "bundled" in result.output


def test_cli_bases_show_an_unknown_base_raises_the_user_error() -> None:
    from tuneloop.cli.main import app

    result = CliRunner().invoke(app, ["bases", "show", "no-such-base"])
    assert isinstance(result.exception, TuneloopError)  # main() prints it without a traceback


@pytest.mark.slow
def test_cli_bases_show_and_prepare_use_the_cached_conversion(
    converted_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tuneloop.cli.main import app

    monkeypatch.setenv("TUNELOOP_HOME", str(converted_home))
    runner = CliRunner()
    base: Base = resolve_base(DEFAULT_BASE)
    shown = runner.invoke(app, ["bases", "show", DEFAULT_BASE], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert base_weights_hash(base, cache_dir=converted_home / "cache") in shown.output
    assert "converted" in shown.output
    prepared = runner.invoke(app, ["bases", "prepare", DEFAULT_BASE], env={"COLUMNS": "200"})
    assert prepared.exit_code == 0, prepared.output
    assert "already converted" in prepared.output

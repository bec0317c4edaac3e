"""``tuneloop bases pull``: a real download through huggingface_hub from a local Hub (testing/fake_hub.py)
over HTTP on loopback: what is fetched, resumption, verification, pinning revisions, and the errors."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tuneloop.bases import base_weights_hash, resolve_base
from tuneloop.bases.pull import pull_base, read_pull_record
from tuneloop.errors import TuneloopError
from tuneloop.testing.fake_hub import FakeHub, tiny_gguf, tiny_model_files

REPO = "tiny-org/tiny-chat"
NEEDED = {
    "README.md",
    "LICENSE",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
}


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    files = tiny_model_files(tmp_path_factory.mktemp("tiny-model"))
    # What a repo holds beside a base: other formats, pickles, assets. None of it is pulled.
    return {
        **files,
        "LICENSE": b"MIT License\n\nPermission is hereby granted...\n",
        ".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
        "pytorch_model.bin": b"\x80\x04pickle" * 100,
        "onnx/model.onnx": b"onnx" * 100,
        "images/logo.png": b"\x89PNG" * 50,
    }


@pytest.fixture(scope="module")
def hub(tiny_files: dict[str, bytes], tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHub]:
    folder = tmp_path_factory.mktemp("ggufs")
    ggufs = {
        "tiny-q4.gguf": tiny_gguf(folder / "q4.gguf", gguf_license="llama3.1", name="q4"),
        "tiny-q8.gguf": tiny_gguf(folder / "q8.gguf", gguf_license="llama3.1", name="q8"),
        # The card says Apache; the GGUF's own metadata comes first.
        "README.md": b"---\nlicense: apache-2.0\n---\n# tiny GGUFs\n",
    }
    with FakeHub(tokens=("hf_accepted",)) as server:
        server.add_repo(REPO, tiny_files)
        server.add_repo("tiny-org/tiny-gguf", ggufs)
        server.add_repo("tiny-org/gated", tiny_files, gated=True)
        server.add_repo("tiny-org/huge", tiny_files, listed_sizes={"model.safetensors": 10**16})
        yield server


@pytest.fixture
def cache(hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh HF cache, where resolve_base looks too (huggingface_hub reads HF_HUB_CACHE at import)."""
    import huggingface_hub.constants

    folder = tmp_path / "hf-hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(folder))
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    hub.clear_faults()
    hub.requests.clear()
    return folder


def pull(hub: FakeHub, cache: Path, name: str = f"hf:{REPO}", **options):
    return pull_base(name, endpoint=hub.url, cache_dir=cache, **options)


def fetched(hub: FakeHub) -> list[str]:
    return sorted(request.path.rsplit("/resolve/", 1)[1].split("/", 1)[1] for request in hub.file_gets())


def test_pull_fetches_what_a_base_needs_and_resolve_finds_it_offline(hub: FakeHub, cache: Path) -> None:
    result = pull(hub, cache)
    commit = hub.repos[REPO].refs["main"]
    assert (result.commit, result.format, result.license, result.license_id) == (commit, "hf", "mit", "mit")
    assert {file.path for file in result.files} == NEEDED
    assert set(fetched(hub)) == NEEDED  # never the pickle, the ONNX export or the images
    assert set(result.skipped) == {".gitattributes", "pytorch_model.bin", "onnx/model.onnx", "images/logo.png"}
    weights = next(file for file in result.files if file.path == "model.safetensors")
    assert (
        weights.lfs
        and weights.sha256 == hashlib.sha256((result.snapshot / "model.safetensors").read_bytes()).hexdigest()
    )

    record = read_pull_record(REPO, commit)
    assert record is not None and record["commit"] == commit and record["revision"] == "main"
    assert record["license"] == {"text": "mit", "id": "mit", "source": "model card"}

    for name in (f"hf:{REPO}", f"hf:{REPO}@main", f"hf:{REPO}@{commit}", f"hf:{REPO}@{commit[:10]}"):
        base = resolve_base(name)
        assert (base.id, base.kind, base.format, base.hf_dir, base.commit) == (
            name,
            "hf",
            "hf",
            result.snapshot,
            commit,
        )
        assert (base.license, base.license_id, base.license_source) == ("mit", "mit", "model card")

    # The files make a model transformers loads and runs.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(result.snapshot)
    model = AutoModelForCausalLM.from_pretrained(result.snapshot)
    chat = [{"role": "user", "content": "hello"}]
    inputs = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    output = model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)
    assert output.shape[1] == inputs["input_ids"].shape[1] + 2


def test_a_dropped_connection_resumes_from_where_it_stopped(
    hub: FakeHub, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    # huggingface_hub writes what it received in chunks of DOWNLOAD_CHUNK_SIZE (10 MB) and resumes from the
    # last one written; a smaller chunk makes a file of 300 kB behave as a file of gigabytes does.
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 16384)
    hub.drop_after("model.safetensors", 100_000)
    result = pull(hub, cache)
    gets = [request for request in hub.file_gets() if request.path.endswith("/model.safetensors")]
    assert [(request.range, request.status) for request in gets] == [(None, 499), ("bytes=98304-", 206)]
    assert "model.safetensors" in result.downloaded and not result.refetched  # and it verified


def test_a_second_pull_downloads_nothing(hub: FakeHub, cache: Path) -> None:
    first = pull(hub, cache)
    hub.requests.clear()
    again = pull(hub, cache)
    assert hub.file_gets() == [] and again.up_to_date and again.bytes_downloaded == 0
    assert again.commit == first.commit
    assert [request.method for request in hub.requests] == ["GET", "GET"]  # model info and the file list


def test_a_tampered_file_is_detected_and_fetched_again(hub: FakeHub, cache: Path) -> None:
    first = pull(hub, cache)
    weights = first.snapshot / "model.safetensors"
    blob = weights.resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0x01
    blob.write_bytes(bytes(data))
    hub.requests.clear()
    again = pull(hub, cache)
    assert again.refetched == ["model.safetensors"] and fetched(hub) == ["model.safetensors"]
    assert (
        hashlib.sha256(weights.read_bytes()).hexdigest()
        == hub.repos[REPO].commits[first.commit]["model.safetensors"].sha256
    )


def test_a_file_served_corrupted_is_refused_and_removed(hub: FakeHub, cache: Path) -> None:
    hub.corrupt("model.safetensors")
    with pytest.raises(TuneloopError) as caught:
        pull(hub, cache)
    error = caught.value
    assert "model.safetensors" in error.message and "does not match the Hub's metadata" in error.message
    assert "sha256" in error.message and error.where == f"hf:{REPO}"
    snapshot = cache / "models--tiny-org--tiny-chat" / "snapshots" / hub.repos[REPO].refs["main"]
    assert not (snapshot / "model.safetensors").exists()
    assert read_pull_record(REPO, hub.repos[REPO].refs["main"]) is None


def test_a_revision_pins_the_commit(hub: FakeHub, cache: Path, tiny_files: dict[str, bytes], tmp_path: Path) -> None:
    first = hub.add_repo("tiny-org/versioned", tiny_files, tags=("v1",))
    newer = tiny_model_files(tmp_path / "newer", seed=1)
    second = hub.add_repo("tiny-org/versioned", newer)  # main moves on; v1 stays

    pinned = pull(hub, cache, "hf:tiny-org/versioned@v1")
    assert pinned.commit == first
    assert resolve_base("hf:tiny-org/versioned@v1").commit == first
    with pytest.raises(TuneloopError) as caught:  # main was never pulled here
        resolve_base("hf:tiny-org/versioned")
    assert caught.value.hint is not None and "tuneloop bases pull hf:tiny-org/versioned" in caught.value.hint

    latest = pull(hub, cache, "hf:tiny-org/versioned")
    assert latest.commit == second
    v1, main = resolve_base("hf:tiny-org/versioned@v1"), resolve_base("hf:tiny-org/versioned")
    assert (v1.commit, main.commit) == (first, second)
    assert base_weights_hash(v1) != base_weights_hash(main)


def test_a_gguf_repo_needs_its_file_chosen(hub: FakeHub, cache: Path) -> None:
    with pytest.raises(TuneloopError) as caught:
        pull(hub, cache, "hf:tiny-org/tiny-gguf")
    assert "2 GGUF models" in caught.value.message
    assert caught.value.hint is not None and "--gguf" in caught.value.hint and "tiny-q8.gguf" in caught.value.hint

    result = pull(hub, cache, "hf:tiny-org/tiny-gguf", gguf="tiny-q8.gguf")
    assert result.format == "gguf" and {file.path for file in result.files} == {"README.md", "tiny-q8.gguf"}
    base = resolve_base("hf:tiny-org/tiny-gguf")
    assert base.format == "gguf" and base.gguf_path is not None and base.gguf_path.name == "tiny-q8.gguf"
    assert (base.license, base.license_source) == ("llama3.1", "gguf")  # the GGUF metadata before the card


def test_hub_errors_say_what_and_how_to_fix(hub: FakeHub, cache: Path) -> None:
    def error(name: str, **options) -> TuneloopError:
        with pytest.raises(TuneloopError) as caught:
            pull(hub, cache, name, **options)
        return caught.value

    unknown = error("hf:tiny-org/no-such-model")
    assert "no model repo 'tiny-org/no-such-model'" in unknown.message and unknown.hint and "log in" in unknown.hint
    assert "has no revision 'v9'" in error(f"hf:{REPO}@v9").message
    gated = error("hf:tiny-org/gated")  # no token at all: refused before any download
    assert "gated" in gated.message and gated.hint and "accept the terms" in gated.hint
    assert "gated" in error("hf:tiny-org/gated", token="hf_not_accepted").message  # refused by the Hub
    assert pull(hub, cache, "hf:tiny-org/gated", token="hf_accepted").commit
    huge = error("hf:tiny-org/huge")
    assert "not enough disk space" in huge.message and huge.hint and "HF_HUB_CACHE" in huge.hint
    assert not (cache / "models--tiny-org--huge" / "blobs").exists()  # refused before fetching anything

    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        nowhere = f"http://127.0.0.1:{probe.getsockname()[1]}"
    with pytest.raises(TuneloopError) as caught:
        pull_base(f"hf:{REPO}", endpoint=nowhere, cache_dir=cache)
    offline = caught.value
    assert "cannot reach the Hugging Face Hub" in offline.message and offline.hint and "network" in offline.hint


# --- the CLI, as a user runs it -------------------------------------------------------------------


def cli_env(hub: FakeHub, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(
        HF_ENDPOINT=hub.url,
        HF_HOME=str(tmp_path / "hf"),
        HF_HUB_CACHE=str(tmp_path / "hf" / "hub"),
        HF_HUB_DISABLE_TELEMETRY="1",
        TUNELOOP_HOME=os.environ["TUNELOOP_HOME"],
        COLUMNS="200",
    )
    return env


TUNELOOP = str(Path(sys.executable).parent / "tuneloop")  # the installed command


def tuneloop(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TUNELOOP, *args], env=env, capture_output=True, text=True, timeout=120)


def test_cli_pull_an_interrupted_pull_resumes_and_show_names_the_commit(
    hub: FakeHub, cache: Path, tmp_path: Path
) -> None:
    env = cli_env(hub, tmp_path)
    commit = hub.repos[REPO].refs["main"]
    hub.stall_after("model.safetensors", 50_000)
    command = [TUNELOOP, "bases", "pull", f"hf:{REPO}"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert hub.stalled.wait(60), "the pull never reached the weights"
        small = NEEDED - {"model.safetensors"}
        deadline = time.monotonic() + 30
        while {path for path in fetched(hub) if path in small} != small and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # the last small file's move into the cache
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        hub.release()
    assert process.returncode == 130, output
    assert "interrupted" in output and "run the same command" in output
    blobs = tmp_path / "hf" / "hub" / "models--tiny-org--tiny-chat" / "blobs"
    assert not list(blobs.glob("*.incomplete"))  # its partial file was removed

    deadline = time.monotonic() + 10
    while not any(request.status == 499 for request in hub.file_gets()) and time.monotonic() < deadline:
        time.sleep(0.05)  # the held connection's handler, released, logs its request
    hub.clear_faults()
    hub.requests.clear()
    done = tuneloop("bases", "pull", f"hf:{REPO}", env=env)
    assert done.returncode == 0, done.stderr
    assert fetched(hub) == ["model.safetensors"]  # only what the interrupted run had not finished
    assert commit in done.stdout and "8 files verified" in done.stdout and "license: mit" in done.stdout

    shown = tuneloop("bases", "show", f"hf:{REPO}", env=env)
    assert shown.returncode == 0, shown.stderr
    assert f"{commit} (pulled" in shown.stdout and "8 files verified" in shown.stdout
    assert "mit, from the model card" in shown.stdout

    missing = tuneloop("bases", "pull", "hf:tiny-org/no-such-model", env=env)
    assert missing.returncode == 2 and "no model repo 'tiny-org/no-such-model'" in missing.stderr
    assert "fix:" in missing.stderr


def test_bases_list_shows_each_license(hub: FakeHub, cache: Path) -> None:
    from typer.testing import CliRunner

    from tuneloop.cli.main import app

    pull(hub, cache)
    pull(hub, cache, "hf:tiny-org/tiny-gguf", gguf="tiny-q4.gguf")
    result = CliRunner().invoke(app, ["bases", "list"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 5}
    assert "Apache-2.0" in rows["smollm2-135m-instruct"]
    assert "│ mit " in rows[f"hf:{REPO}"] and "llama3.1" in rows["hf:tiny-org/tiny-gguf"]


def test_a_version_on_a_pulled_base_records_its_commit_and_license(hub: FakeHub, cache: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from test_serve import write_random_lora
    from tuneloop.cli.main import app
    from tuneloop.registry.versions import register_version, version_base_commit, version_base_license

    result = pull(hub, cache)
    base = resolve_base(f"hf:{REPO}")
    info, _ = register_version(
        "liability-extraction",
        write_random_lora(tmp_path / "lora", 1, layers=2),  # hashed, not loaded
        base_id=base.id,
        base_weights_hash=base_weights_hash(base),
        system_prompt="Extract.",
        input_template="{text}",
        decoding={"temperature": 0.0},
    )
    assert info.config["base"]["commit"] == result.commit and version_base_commit(info) == result.commit
    assert version_base_license(info).id == "mit"
    shown = CliRunner().invoke(app, ["models", "show", info.id], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    lines = [" ".join(line.split()) for line in shown.output.splitlines()]
    assert f"base commit {result.commit}" in lines and "base license mit, from the model card" in lines


def test_a_name_the_hub_would_refuse_is_refused_before_any_request(hub: FakeHub, cache: Path) -> None:
    with pytest.raises(TuneloopError) as caught:
        pull(hub, cache, "hf:not a repo/na me!!")
    assert "not a valid Hugging Face repo id" in caught.value.message and "hf:<org>/<name>" in (caught.value.hint or "")
    assert hub.requests == []

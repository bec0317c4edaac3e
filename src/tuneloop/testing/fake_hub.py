"""A local Hugging Face Hub: model repos served over real HTTP on loopback, the way the Hub serves them.

For tests of ``tuneloop bases pull`` (this machine has no internet, and tests must not depend on it) and
for trying a pull by hand::

    python -m tuneloop.testing.fake_hub --port 8765 --repo tiny-org/tiny-chat=/path/to/model/folder
    HF_ENDPOINT=http://127.0.0.1:8765 tuneloop bases pull hf:tiny-org/tiny-chat

It implements what ``huggingface_hub``'s ``snapshot_download`` / ``hf_hub_download`` call:

- ``GET /api/models/{org}/{name}[/revision/{rev}]``: model info (``sha``, ``siblings``, ``gated``,
  ``cardData`` from the README's front matter);
- ``GET /api/models/{org}/{name}/tree/{rev}[/{path}]?recursive=…``: the file list with sizes, git blob ids
  and LFS info (``oid`` = sha256, ``size``, ``pointerSize``);
- ``HEAD`` / ``GET /{org}/{name}/resolve/{rev}/{path}``: the file, with ``X-Repo-Commit``, ``ETag`` (the git
  blob id, or for LFS files the pointer's, with ``X-Linked-Etag`` = sha256 and ``X-Linked-Size``) and
  ``Range`` requests (206) for resumed downloads;
- the Hub's errors: 404 with ``X-Error-Code: RepoNotFound`` / ``RevisionNotFound`` / ``EntryNotFound``, and
  403 ``GatedRepo`` for a gated repo's files without an accepted token.

Faults, set per file: ``drop_after`` (send some bytes, then close the connection, a number of times),
``stall_after`` (send some bytes, then hang until ``release``), ``corrupt`` (serve other bytes of the same
size under the listed metadata) and ``fail`` (an HTTP error). Every request is logged (``requests``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth", ".onnx", ".h5", ".msgpack", ".model")


@dataclass
class HubFile:
    path: str
    content: bytes
    lfs: bool
    listed_size: int | None = None  # what the listing claims (a huge model, without holding its bytes)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @property
    def pointer(self) -> bytes:
        return (
            f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {len(self.content)}\n".encode()
        )

    @property
    def blob_id(self) -> str:
        """The git blob id: of the content, or for an LFS file of its pointer."""
        stored = self.pointer if self.lfs else self.content
        return hashlib.sha1(b"blob %d\0" % len(stored) + stored, usedforsecurity=False).hexdigest()

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.blob_id

    def tree_entry(self) -> dict[str, Any]:
        size = len(self.content) if self.listed_size is None else self.listed_size
        entry: dict[str, Any] = {"type": "file", "oid": self.blob_id, "size": size, "path": self.path}
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": size, "pointerSize": len(self.pointer)}
        return entry


@dataclass
class HubRepo:
    repo_id: str
    commits: dict[str, dict[str, HubFile]] = field(default_factory=dict)  # commit → path → file
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag → commit
    gated: bool = False

    def commit_of(self, revision: str) -> str | None:
        if revision in self.refs:
            return self.refs[revision]
        return revision if revision in self.commits else None


@dataclass(frozen=True)
class HubRequest:
    method: str
    path: str  # the URL path, decoded
    range: str | None
    status: int


@dataclass
class _Fault:
    kind: str  # drop | stall | corrupt | fail
    after: int = 0
    times: int = 1_000_000
    status: int = 500


class FakeHub:
    """Repos in memory, served by a threaded HTTP/1.1 server on 127.0.0.1 (``url``)."""

    def __init__(self, *, port: int = 0, tokens: tuple[str, ...] = ()) -> None:
        self.repos: dict[str, HubRepo] = {}
        self.requests: list[HubRequest] = []
        self.tokens = set(tokens)  # tokens that have accepted every gated repo's terms
        self._faults: dict[str, _Fault] = {}
        self._lock = threading.Lock()
        self._released = threading.Event()
        self.stalled = threading.Event()  # set when a stall_after fault is holding a connection
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # --- content ----------------------------------------------------------------------------------

    def add_repo(
        self,
        repo_id: str,
        files: dict[str, bytes],
        *,
        branch: str = "main",
        tags: tuple[str, ...] = (),
        gated: bool = False,
        listed_sizes: dict[str, int] | None = None,
    ) -> str:
        """Commit ``files`` (the whole tree) to ``branch`` of ``repo_id``; returns the commit's 40-hex sha.

        ``listed_sizes``: sizes the file listing claims instead of the real ones (a model too big for the disk).
        """
        with self._lock:
            repo = self.repos.setdefault(repo_id, HubRepo(repo_id))
            repo.gated = repo.gated or gated
            parent = repo.refs.get(branch, "")
            digest = hashlib.sha1(f"{repo_id}\0{parent}\0".encode(), usedforsecurity=False)
            for path in sorted(files):
                digest.update(f"{path}\0{hashlib.sha256(files[path]).hexdigest()}\0".encode())
            commit = digest.hexdigest()
            repo.commits[commit] = {
                path: HubFile(
                    path,
                    content,
                    lfs=path.endswith(LFS_SUFFIXES) or len(content) >= 10 << 20,
                    listed_size=(listed_sizes or {}).get(path),
                )
                for path, content in files.items()
            }
            repo.refs[branch] = commit
            for tag in tags:
                repo.refs[tag] = commit
            return commit

    # --- faults -----------------------------------------------------------------------------------

    def drop_after(self, path: str, nbytes: int, *, times: int = 1) -> None:
        """The next ``times`` GETs of ``path`` send ``nbytes`` of the body, then close the connection."""
        self._set_fault(path, _Fault("drop", after=nbytes, times=times))

    def stall_after(self, path: str, nbytes: int) -> None:
        """GETs of ``path`` send ``nbytes`` of the body, then hang until ``release()`` (or 60 s)."""
        self._released.clear()
        self.stalled.clear()
        self._set_fault(path, _Fault("stall", after=nbytes))

    def corrupt(self, path: str, *, times: int = 1_000_000) -> None:
        """GETs of ``path`` serve bytes of the right size that are not the file (one byte flipped)."""
        self._set_fault(path, _Fault("corrupt", times=times))

    def fail(self, path: str, status: int = 500, *, times: int = 1_000_000) -> None:
        self._set_fault(path, _Fault("fail", status=status, times=times))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
        self.release()

    def release(self) -> None:
        self._released.set()

    def _set_fault(self, path: str, fault: _Fault) -> None:
        with self._lock:
            self._faults[path] = fault

    def _take_fault(self, path: str, method: str) -> _Fault | None:
        with self._lock:
            fault = self._faults.get(path)
            if fault is None or (method == "HEAD" and fault.kind != "fail"):
                return None
            fault.times -= 1
            if fault.times <= 0:
                del self._faults[path]
            return fault

    # --- running ----------------------------------------------------------------------------------

    def start(self) -> FakeHub:
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def file_gets(self, repo_id: str | None = None) -> list[HubRequest]:
        """The GETs of repo files (``/resolve/``) so far."""
        prefix = f"/{repo_id}/resolve/" if repo_id else None
        return [
            request
            for request in list(self.requests)
            if request.method == "GET"
            and "/resolve/" in request.path
            and (prefix is None or request.path.startswith(prefix))
        ]


# --- the HTTP side ---------------------------------------------------------------------------------

_INFO = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?/?$")
_TREE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$")
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


class _HubError(Exception):
    def __init__(self, status: int, code: str, message: str, commit: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.commit = status, code, message, commit


def _handler_for(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as huggingface_hub's connection pool expects

        def log_message(self, format: str, *args: Any) -> None:
            pass  # requests are kept in hub.requests, not printed

        def do_GET(self) -> None:
            self._answer("GET")

        def do_HEAD(self) -> None:
            self._answer("HEAD")

        def _answer(self, method: str) -> None:
            url = urlsplit(self.path)
            # Only the path's segments are decoded: a revision such as refs%2Fpr%2F1 stays one segment.
            path = url.path
            query = parse_qs(url.query)
            status = 200
            try:
                if match := _RESOLVE.match(path):
                    status = self._resolve(method, match["repo"], unquote(match["rev"]), unquote(match["path"]))
                elif match := _TREE.match(path):
                    self._json(self._tree(match["repo"], unquote(match["rev"]), unquote(match["path"] or ""), query))
                elif match := _INFO.match(path):
                    self._json(self._info(match["repo"], unquote(match["rev"] or "main")))
                else:
                    raise _HubError(404, "", f"no route {path}")
            except _HubError as error:
                status = error.status
                self._error(error)
            except (BrokenPipeError, ConnectionResetError):
                status = 499  # the client went away
            hub.requests.append(HubRequest(method, unquote(path), self.headers.get("Range"), status))

        # --- routes ---------------------------------------------------------------------------------

        def _repo(self, repo_id: str) -> HubRepo:
            repo = hub.repos.get(repo_id)
            if repo is None:
                raise _HubError(404, "RepoNotFound", "Repository not found")
            return repo

        def _files(self, repo: HubRepo, revision: str) -> tuple[str, dict[str, HubFile]]:
            commit = repo.commit_of(revision)
            if commit is None:
                raise _HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return commit, repo.commits[commit]

        def _info(self, repo_id: str, revision: str) -> dict[str, Any]:
            repo = self._repo(repo_id)
            commit, files = self._files(repo, revision)
            readme = files.get("README.md")
            return {
                "_id": hashlib.md5(repo_id.encode(), usedforsecurity=False).hexdigest()[:24],
                "id": repo_id,
                "modelId": repo_id,
                "author": repo_id.split("/")[0],
                "sha": commit,
                "lastModified": "2026-01-01T00:00:00.000Z",
                "createdAt": "2026-01-01T00:00:00.000Z",
                "private": False,
                "gated": "auto" if repo.gated else False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "library_name": "transformers",
                "cardData": _card_data(readme.content) if readme else None,
                "siblings": [{"rfilename": path} for path in sorted(files)],
                "usedStorage": sum(len(file.content) for file in files.values()),
            }

        def _tree(self, repo_id: str, revision: str, under: str, query: dict[str, list[str]]) -> list[dict[str, Any]]:
            repo = self._repo(repo_id)
            _commit, files = self._files(repo, revision)
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            prefix = f"{under.strip('/')}/" if under.strip("/") else ""
            entries: dict[str, dict[str, Any]] = {}
            for path in sorted(files):
                if not path.startswith(prefix):
                    continue
                rest = path[len(prefix) :]
                parts = rest.split("/")
                for depth in range(1, len(parts)):  # the folders on the way
                    folder = prefix + "/".join(parts[:depth])
                    if recursive or depth == 1:
                        entries.setdefault(folder, {"type": "directory", "oid": "0" * 40, "size": 0, "path": folder})
                if recursive or len(parts) == 1:
                    entries[path] = files[path].tree_entry()
            return list(entries.values())

        def _resolve(self, method: str, repo_id: str, revision: str, path: str) -> int:
            repo = self._repo(repo_id)
            commit, files = self._files(repo, revision)
            file = files.get(path)
            if file is None:
                raise _HubError(404, "EntryNotFound", f"{path} does not exist on {revision}", commit=commit)
            if repo.gated and self._token() not in hub.tokens:
                raise _HubError(403, "GatedRepo", f"Access to model {repo_id} is restricted.", commit=commit)
            fault = hub._take_fault(path, method)
            if fault is not None and fault.kind == "fail":
                raise _HubError(fault.status, "", "injected failure", commit=commit)
            content = file.content
            if fault is not None and fault.kind == "corrupt":
                content = bytes([content[0] ^ 0xFF]) + content[1:] if content else content
            start, end = 0, len(content)
            status = 200
            wanted = self.headers.get("Range")
            if wanted and method == "GET" and (match := _RANGE.match(wanted.strip())):
                start = int(match[1])
                end = min(len(content), int(match[2]) + 1) if match[2] else len(content)
                if start >= len(content):
                    raise _HubError(416, "", "range not satisfiable")
                status = 206
            self.send_response(status)
            self.send_header("X-Repo-Commit", commit)
            self.send_header("ETag", f'"{file.blob_id}"')
            if file.lfs:
                self.send_header("X-Linked-Etag", f'"{file.sha256}"')
                self.send_header("X-Linked-Size", str(len(file.content)))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(end - start))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(content)}")
            self.end_headers()
            if method == "HEAD":
                return status
            body = content[start:end]
            if fault is not None and fault.kind in ("drop", "stall"):
                self.wfile.write(body[: fault.after])
                self.wfile.flush()
                if fault.kind == "stall":
                    hub.stalled.set()
                    hub._released.wait(60)
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return 499
            self.wfile.write(body)
            return status

        # --- answers --------------------------------------------------------------------------------

        def _token(self) -> str | None:
            auth = self.headers.get("Authorization") or ""
            return auth.removeprefix("Bearer ").strip() or None

        def _json(self, payload: Any) -> None:
            body = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, error: _HubError) -> None:
            body = json.dumps({"error": error.message}).encode()
            self.send_response(error.status)
            if error.code:
                self.send_header("X-Error-Code", error.code)
            self.send_header("X-Error-Message", error.message)
            if error.commit:
                self.send_header("X-Repo-Commit", error.commit)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

    return Handler


# --- tiny models to serve --------------------------------------------------------------------------

TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def save_tiny_chat_model(
    folder: Path,
    *,
    eos_token: str = "<|im_end|>",
    pad_token: str | None = "<|endoftext|>",
    hidden_size: int = 64,
    layers: int = 2,
    seed: int = 0,
) -> Path:
    """A randomly initialised Llama with a word-level ChatML tokenizer, saved with ``save_pretrained`` in
    ``folder`` (built, not downloaded). ``eos_token``/``pad_token``: an HF chat model often keeps the
    pretraining ``<|endoftext|>`` as its eos and has no pad token, which loading must put right."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "system", "user", "assistant", "\n"]
    words += ["hello", "world", "amount", "is", "1234", "{", "}", ":", '"', "."]
    vocab = {word: index for index, word in enumerate(words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        eos_token=eos_token,
        **({"pad_token": pad_token} if pad_token else {}),
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=max(2, hidden_size // 16),
        num_key_value_heads=max(1, hidden_size // 32),
        max_position_embeddings=256,
        eos_token_id=vocab[eos_token],
    )
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_model_files(folder: Path, *, card_license: str | None = "mit", seed: int = 0) -> dict[str, bytes]:
    """A 2-layer tiny Llama (``save_tiny_chat_model``), plus a model card; returns the repo's files by path."""
    save_tiny_chat_model(folder, seed=seed)
    card = f"---\nlicense: {card_license}\nlibrary_name: transformers\n---\n" if card_license else ""
    (folder / "README.md").write_text(card + "# tiny-chat\n\nA 2-layer Llama for tests.\n", encoding="utf-8")
    return _folder_files(folder)


def tiny_gguf(path: Path, *, gguf_license: str | None = None, name: str = "tiny") -> bytes:
    """A small GGUF file (a llama header, a few tensors, ``general.license`` when given); returns its bytes."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    if gguf_license:
        writer.add_license(gguf_license)
    writer.add_context_length(64)
    writer.add_embedding_length(8)
    writer.add_block_count(1)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["<unk>", "a", "b"])
    rng = np.random.default_rng(0)
    writer.add_tensor("token_embd.weight", rng.standard_normal((3, 8)).astype(np.float32))
    writer.add_tensor("output_norm.weight", np.ones(8, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


def _folder_files(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and ".cache" not in path.parts
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A local Hugging Face Hub serving model folders.")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument(
        "--repo", action="append", default=[], metavar="ORG/NAME=FOLDER", help="serve FOLDER as ORG/NAME"
    )
    args = parser.parse_args(argv)
    hub = FakeHub(port=args.port)
    for spec in args.repo:
        repo_id, _, folder = spec.partition("=")
        commit = hub.add_repo(repo_id, _folder_files(Path(folder)))
        print(f"{repo_id}: {folder} at commit {commit}")
    with hub:
        print(f"serving on {hub.url} (HF_ENDPOINT={hub.url}); Ctrl-C stops")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()


def _card_data(readme: bytes) -> dict[str, Any] | None:
    from tuneloop.bases.licenses import card_metadata

    return card_metadata(readme.decode("utf-8", errors="replace"))

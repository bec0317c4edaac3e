"""``tuneloop bases pull hf:org/name[@revision]``: download a base from the Hugging Face Hub, once, verified.

The one place tuneloop downloads a model; ``resolve_base`` never does. The work is ``huggingface_hub``'s
(``snapshot_download`` into the normal HF cache, so every tool that reads that cache finds the files);
tuneloop chooses the files and checks them:

1. the revision (``main`` by default, a branch, tag or commit) is resolved to a commit with the Hub's model
   info, and the commit's file list (sizes, git blob ids, LFS sha256) is read;
2. only what a base needs is chosen: config, tokenizer, ``*.safetensors`` (or one GGUF, ``--gguf``),
   README and LICENSE files; never pickles, other formats or the rest of the repo (``--include`` adds
   patterns);
3. free disk space is checked against the sizes still to fetch, then ``snapshot_download`` fetches what is
   missing, pinned to the commit, with a rich progress bar. A dropped connection is resumed from the byte
   it stopped at (an HTTP Range request); an interrupted run keeps the files it completed, so running the
   same command again fetches only the rest, and a finished pull fetches nothing;
4. every chosen file is checked against the Hub's metadata: its size, and the sha256 of LFS files (the git
   blob sha1 of the others). A file that does not match is fetched again, once; if it still does not
   match it is removed and the pull refused;
5. the ref (``refs/main``) is written, and a record of the pull (commit, files and digests, license) is kept
   in ``$TUNELOOP_HOME/bases/hf/<org>--<name>/<commit>.json``, which ``tuneloop bases show`` reads.
"""

from __future__ import annotations

import errno
import fnmatch
import glob
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tuneloop.bases.licenses import find_license
from tuneloop.bases.resolve import HF_PREFIX, checked_hf_name
from tuneloop.config import get_settings
from tuneloop.errors import TuneloopError
from tuneloop.licenses import normalize_license

if TYPE_CHECKING:
    from huggingface_hub.hf_api import RepoFile
    from rich.progress import Progress, TaskID

RECORD_SCHEMA = "tuneloop.base-pull/1"

# What a base needs, at the repo's top level: its config, its tokenizer, and the card and license files.
CONFIG_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "spiece.model",
    "chat_template.jinja",
    "chat_template.json",
)
CARD_PATTERNS = ("README.md", "LICENSE*", "LICENCE*", "NOTICE*", "USE_POLICY*")
_SHARD = re.compile(r"^(?P<stem>.+)-(?P<index>\d{5})-of-(?P<total>\d{5})\.gguf$", re.IGNORECASE)
_HASH_CHUNK = 8 << 20
STALE_PARTIAL_S = 3600.0  # a partial file untouched this long is a killed pull's, not a running one's


@dataclass(frozen=True)
class PulledFile:
    """One file of a pulled base, as the Hub describes it (what it was verified against)."""

    path: str
    size: int
    lfs: bool
    sha256: str | None  # LFS files: the sha256 of the content
    git_sha1: str  # the git blob id (for an LFS file, that of its pointer)


@dataclass(frozen=True)
class PullResult:
    base_id: str  # hf:org/name[@revision] as asked
    repo_id: str
    revision: str  # as asked (default main)
    commit: str
    snapshot: Path
    format: Literal["hf", "gguf"]
    files: list[PulledFile]
    downloaded: list[str]  # fetched by this run (the others were already here)
    refetched: list[str]  # were here but did not match the Hub's metadata: fetched again
    bytes_downloaded: int
    license: str
    license_id: str
    record_path: Path
    seconds: float
    skipped: list[str] = field(default_factory=list)  # repo files a base does not need

    @property
    def up_to_date(self) -> bool:
        return not self.downloaded and not self.refetched


def pull_base(
    name: str,
    *,
    gguf: str | None = None,
    include: Sequence[str] = (),
    endpoint: str | None = None,
    cache_dir: Path | None = None,
    token: str | None = None,
    progress: Progress | None = None,
    say: Callable[[str], None] = lambda _message: None,
) -> PullResult:
    """Download (or complete, or check) ``hf:org/name[@revision]`` into the HF cache; see the module doc.

    ``endpoint``: the Hub's URL (default: ``HF_ENDPOINT``, else huggingface.co); ``cache_dir``: the HF hub
    cache (default: ``HF_HUB_CACHE``); ``progress``: a started rich Progress to show bytes on.
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.file_download import repo_folder_name

    started = time.perf_counter()
    name = name.strip()
    if not name.startswith(HF_PREFIX):
        raise TuneloopError(
            "only Hugging Face bases are pulled", where=name, hint=f"write it as hf:<org>/<name>, e.g. hf:{name}"
        )
    repo_id, asked = checked_hf_name(name, where=name)
    revision = asked or "main"
    endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
    cache = Path(cache_dir or constants.HF_HUB_CACHE).expanduser()
    api = HfApi(endpoint=endpoint, token=token)
    context = _Context(name=name, repo_id=repo_id, revision=revision, endpoint=endpoint, cache=cache)

    with context.translating():
        info = api.model_info(repo_id, revision=revision)
        commit = info.sha
        assert commit, "the Hub's model info always names the commit"
        tree = [entry for entry in api.list_repo_tree(repo_id, revision=commit, recursive=True) if _is_file(entry)]
    if info.gated and token is None and _saved_token() is None:
        raise context.gated()
    by_path = {entry.path: entry for entry in tree}
    chosen, fmt = choose_files(list(by_path), gguf=gguf, include=include, where=f"{name} ({commit[:12]})")
    storage = cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    snapshot = storage / "snapshots" / commit
    stale = remove_partial_downloads(repo_id, cache_dir=cache, older_than_s=STALE_PARTIAL_S)
    if stale:
        say(f"removed {len(stale)} partial files left by an interrupted pull")
    missing = [path for path in chosen if not (snapshot / path).exists()]
    _check_disk_space(cache, sum(_size(by_path[path]) for path in missing), context)
    say(
        f"{repo_id} at {revision} is commit {commit[:12]}: {len(chosen)} files of {len(tree)} "
        f"({_human(sum(_size(by_path[path]) for path in chosen))}), {len(missing)} to fetch"
    )

    fetched = _Counter()
    download_task = (
        progress.add_task(f"pull {repo_id}", total=sum(_size(by_path[path]) for path in missing) or 1)
        if progress is not None and missing
        else None
    )
    if missing:
        with context.translating():
            _snapshot_download(api, context, commit, missing, fetched, progress, download_task)
    if progress is not None and download_task is not None:
        progress.update(download_task, completed=progress.tasks[download_task].total)

    verify_task = (
        progress.add_task("verify", total=sum(_size(by_path[path]) for path in chosen) or 1) if progress else None
    )
    refetched = []
    for path in chosen:
        entry = by_path[path]
        problem = _verify(snapshot / path, entry, progress, verify_task)
        if problem is None:
            continue
        say(f"{path}: {problem}; fetching it again")
        _remove_snapshot_file(snapshot / path)
        with context.translating():
            _snapshot_download(api, context, commit, [path], fetched, None, None)
        problem = _verify(snapshot / path, entry, None, None)
        if problem is not None:
            _remove_snapshot_file(snapshot / path)
            raise TuneloopError(
                f"{path} from {repo_id} at {commit[:12]} does not match the Hub's metadata ({problem}) after "
                "fetching it twice; it was removed",
                where=name,
                hint=(
                    f"the endpoint ({endpoint}) or a proxy on the way serves a different file than the Hub lists; "
                    "run the pull again later, or from another network"
                ),
            )
        refetched.append(path)

    if revision != commit:  # so hf:org/name (main) and hf:org/name@tag resolve offline to this commit
        _write_text_atomic(storage / "refs" / revision, commit)
    found = find_license(folder=snapshot) if fmt == "hf" else _gguf_repo_license(snapshot, chosen)
    files = [_pulled_file(by_path[path]) for path in chosen]
    record_path = pull_record_path(repo_id, commit)
    hub_license = info.card_data.get("license") if info.card_data is not None else None
    record = {
        "schema": RECORD_SCHEMA,
        "base": name,
        "repo_id": repo_id,
        "revision": revision,
        "commit": commit,
        "endpoint": endpoint,
        "pulled_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "snapshot": str(snapshot),
        "format": fmt,
        "gated": bool(info.gated),
        "files": [asdict(item) for item in files],
        "license": {"text": found.text, "id": found.id, "source": found.source},
        "hub_license": hub_license if isinstance(hub_license, str) else None,
    }
    _write_text_atomic(record_path, json.dumps(record, indent=1) + "\n")
    return PullResult(
        base_id=name,
        repo_id=repo_id,
        revision=revision,
        commit=commit,
        snapshot=snapshot,
        format=fmt,
        files=files,
        downloaded=[path for path in missing if path not in refetched],
        refetched=refetched,
        bytes_downloaded=fetched.total,
        license=found.text,
        license_id=normalize_license(found.text),
        record_path=record_path,
        seconds=time.perf_counter() - started,
        skipped=[path for path in by_path if path not in chosen],
    )


def remove_partial_downloads(
    repo_id: str, *, cache_dir: Path | None = None, newer_than: float | None = None, older_than_s: float | None = None
) -> list[Path]:
    """Remove the partial files (``blobs/*.incomplete``) of ``repo_id``'s downloads: those written since
    ``newer_than`` (a time.time(): this process's, when it is interrupted), or not touched for ``older_than_s``
    seconds (a killed process's; huggingface_hub never reuses them: each download writes its own)."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    blobs = Path(cache_dir or constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model") / "blobs"
    removed = []
    now = time.time()
    for path in blobs.glob("*.incomplete"):
        try:
            modified = path.stat().st_mtime
        except OSError:
            continue
        if (newer_than is not None and modified >= newer_than) or (
            older_than_s is not None and now - modified > older_than_s
        ):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def pull_record_path(repo_id: str, commit: str) -> Path:
    return get_settings().home / "bases" / "hf" / repo_id.replace("/", "--") / f"{commit}.json"


def read_pull_record(repo_id: str, commit: str) -> dict[str, Any] | None:
    """What ``tuneloop bases pull`` recorded for this commit, or None (pulled by another tool, or not at all)."""
    try:
        record = json.loads(pull_record_path(repo_id, commit).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("schema") == RECORD_SCHEMA else None


# --- which files -----------------------------------------------------------------------------------


def choose_files(
    paths: Sequence[str], *, gguf: str | None = None, include: Sequence[str] = (), where: str = ""
) -> tuple[list[str], Literal["hf", "gguf"]]:
    """The files of a repo a base needs, and its format; TuneloopError (with the fix) when there are none."""
    top = [path for path in paths if "/" not in path]
    cards = [path for path in top if any(fnmatch.fnmatchcase(path, pattern) for pattern in CARD_PATTERNS)]
    ggufs = [path for path in paths if path.lower().endswith(".gguf")]
    fmt: Literal["hf", "gguf"]
    if gguf is not None:
        matches = [path for path in ggufs if gguf in (path, path.rsplit("/", 1)[-1])]
        if len(matches) != 1:
            problem = f"no GGUF file {gguf!r}" if not matches else f"{len(matches)} GGUF files named {gguf!r}"
            raise TuneloopError(
                f"{problem} in the repo",
                where=where,
                hint="choose one of: " + (", ".join(ggufs) if ggufs else "(none: this repo has no GGUF files)"),
            )
        chosen, fmt = [*cards, *_with_shards(matches[0], ggufs)], "gguf"
    elif any(path.endswith(".safetensors") for path in top):
        chosen = [
            path
            for path in top
            if path in CONFIG_FILES
            or path in TOKENIZER_FILES
            or path.endswith((".safetensors", ".safetensors.index.json"))
        ]
        if "config.json" not in chosen:
            raise TuneloopError(
                "the repo has safetensors weights but no config.json at its top level: not a transformers model",
                where=where,
                hint="choose a repo in transformers format, or a GGUF file with --gguf",
            )
        chosen, fmt = [*chosen, *cards], "hf"
    else:
        models = sorted({_shard_group(path) for path in ggufs})
        if len(models) != 1:
            weights = [path for path in paths if path.endswith((".bin", ".pt", ".pth", ".ckpt", ".onnx", ".h5"))]
            raise TuneloopError(
                f"the repo holds {len(models)} GGUF models; which one?"
                if models
                else "the repo has neither safetensors weights at its top level nor a GGUF file"
                + (f" (it has {', '.join(weights[:4])}: formats tuneloop does not load)" if weights else ""),
                where=where,
                hint=(
                    "pull one with --gguf FILE: " + ", ".join(ggufs)
                    if models
                    else "choose a repo with model.safetensors (transformers format) or a .gguf file"
                ),
            )
        chosen, fmt = [*cards, *_with_shards(ggufs[0], ggufs)], "gguf"
    extra = [path for path in paths if any(fnmatch.fnmatchcase(path, pattern) for pattern in include)]
    return list(dict.fromkeys([*chosen, *extra])), fmt


def _shard_group(path: str) -> str:
    shard = _SHARD.match(path)
    return f"{shard['stem']}-of-{shard['total']}" if shard else path


def _with_shards(path: str, ggufs: Iterable[str]) -> list[str]:
    """A GGUF file and, for a split one (``-00001-of-00003.gguf``), all its parts."""
    group = _shard_group(path)
    return sorted(other for other in ggufs if _shard_group(other) == group)


# --- downloading -----------------------------------------------------------------------------------


def _snapshot_download(
    api: Any,
    context: _Context,
    commit: str,
    paths: list[str],
    fetched: _Counter,
    progress: Progress | None,
    task: TaskID | None,
) -> None:
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(
            context.repo_id,
            revision=commit,  # pinned: a branch that moves meanwhile changes nothing
            cache_dir=context.cache,
            endpoint=context.endpoint,
            token=api.token,
            allow_patterns=[glob.escape(path) for path in paths],  # exact names (fnmatch would read [..])
            tqdm_class=_progress_class(fetched, progress, task),  # type: ignore[arg-type]
            max_workers=4,
        )
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise context.disk_full(None, None) from None
        raise


class _Counter:
    def __init__(self) -> None:
        self.total = 0


def _progress_class(fetched: _Counter, progress: Progress | None, task: TaskID | None) -> type:
    """A tqdm stand-in for ``snapshot_download(tqdm_class=...)`` that moves our rich bar by the bytes written.

    ``snapshot_download`` makes three bars from it: files done ("Fetching N files"), bytes received and
    bytes written ("Reconstructing…"); the last is the one counted (it is the one a resumed file starts
    at its offset, and a Range request ignored by a server rewinds).
    """

    class RichBar:
        def __init__(self, *_args: Any, desc: str = "", total: float | None = None, initial: float = 0, **_: Any):
            self.desc, self.total, self.n = desc, total, initial
            self.counts = desc.startswith("Reconstructing")
            self.format_dict: dict[str, Any] = {"rate": None}

        def update(self, n: float | None = 1) -> None:
            step = int(n or 0)
            self.n += step
            if self.counts:
                fetched.total += step
                if progress is not None and task is not None:
                    progress.advance(task, step)

        def refresh(self, *_args: Any, **_kwargs: Any) -> None:
            pass

        def set_description(self, desc: str = "", *_args: Any, **_kwargs: Any) -> None:
            pass

        set_description_str = set_description
        set_postfix_str = set_description

        def close(self) -> None:
            pass

        def __enter__(self) -> RichBar:
            return self

        def __exit__(self, *_exc: object) -> None:
            pass

    return RichBar


def _check_disk_space(cache: Path, needed: int, context: _Context) -> None:
    probe = cache
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    # A margin of 1 %: a disk filled to the last byte fails at the next write of anything else.
    if needed > 0 and needed > free * 0.99:
        raise context.disk_full(needed, free)


# --- verifying ------------------------------------------------------------------------------------


def _verify(path: Path, entry: RepoFile, progress: Progress | None, task: TaskID | None) -> str | None:
    """Why the file does not match the Hub's metadata, or None when it does."""
    expected_size = _size(entry)
    try:
        size = path.stat().st_size
    except OSError:
        return "missing"
    if size != expected_size:
        return f"{size:,} bytes where the Hub lists {expected_size:,}"
    if entry.lfs is not None:
        digest = hashlib.sha256()
    else:
        digest = hashlib.sha1(usedforsecurity=False)  # git's blob id: sha1 of "blob <size>\0" + content
        digest.update(f"blob {size}\0".encode())
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
            if progress is not None and task is not None:
                progress.advance(task, len(chunk))
    got = digest.hexdigest()
    expected = entry.lfs.sha256 if entry.lfs is not None else entry.blob_id
    if got != expected:
        kind = "sha256" if entry.lfs is not None else "git blob sha1"
        return f"{kind} {got[:12]}… where the Hub lists {expected[:12]}…"
    return None


def _remove_snapshot_file(path: Path) -> None:
    """A snapshot file and the cache blob it links to (so the next download does not reuse the bad blob)."""
    if path.is_symlink():
        target = path.resolve()
        path.unlink()
        target.unlink(missing_ok=True)
    else:
        path.unlink(missing_ok=True)


# --- helpers --------------------------------------------------------------------------------------


class _Context:
    """What a pull is about, for turning huggingface_hub's errors into TuneloopErrors with the fix."""

    def __init__(self, *, name: str, repo_id: str, revision: str, endpoint: str, cache: Path) -> None:
        self.name, self.repo_id, self.revision, self.endpoint, self.cache = name, repo_id, revision, endpoint, cache

    def translating(self) -> _Translating:
        return _Translating(self)

    def gated(self) -> TuneloopError:
        return TuneloopError(
            f"{self.repo_id} is gated: its files are served only to a logged-in account that accepted its terms",
            where=self.name,
            hint=(
                f"accept the terms at {self.endpoint}/{self.repo_id}, then log in (`hf auth login`, or set HF_TOKEN) "
                "and pull again"
            ),
        )

    def disk_full(self, needed: int | None, free: int | None) -> TuneloopError:
        amount = f": {_human(needed)} to fetch, {_human(free)} free" if needed is not None and free is not None else ""
        return TuneloopError(
            f"not enough disk space for {self.repo_id} in the Hugging Face cache{amount}",
            where=str(self.cache),
            hint=(
                "free some space (`hf cache ls` / `hf cache rm` list and remove cached repos), or point "
                "HF_HUB_CACHE (or HF_HOME) at a disk with room, then run the pull again: files already fetched are kept"
            ),
        )

    def translate(self, exc: BaseException) -> TuneloopError | None:
        import httpx2
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            OfflineModeIsEnabled,
            RemoteEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        if isinstance(exc, LocalEntryNotFoundError) and isinstance(
            exc.__cause__, HfHubHTTPError | OfflineModeIsEnabled
        ):
            return self.translate(exc.__cause__)  # a file's HEAD failed: say how, not just "not in the cache"
        if isinstance(exc, OfflineModeIsEnabled) or "HF_HUB_OFFLINE" in str(exc):
            return TuneloopError(
                "HF_HUB_OFFLINE is set, so nothing can be downloaded",
                where=self.name,
                hint="unset HF_HUB_OFFLINE to pull (bases already pulled resolve offline anyway)",
            )
        if isinstance(exc, GatedRepoError):
            return self.gated()
        if isinstance(exc, RepositoryNotFoundError):
            return TuneloopError(
                f"there is no model repo {self.repo_id!r} on {self.endpoint} (or it is private)",
                where=self.name,
                hint=f"check the name at {self.endpoint}/models?search={self.repo_id.split('/')[-1]}; for a private "
                "repo, log in (`hf auth login`, or set HF_TOKEN) with an account that can read it",
            )
        if isinstance(exc, RevisionNotFoundError):
            return TuneloopError(
                f"{self.repo_id} has no revision {self.revision!r} (branch, tag or commit)",
                where=self.name,
                hint=f"see its branches, tags and commits at {self.endpoint}/{self.repo_id}/commits/main; "
                f"or pull hf:{self.repo_id} for main",
            )
        if isinstance(exc, RemoteEntryNotFoundError):
            return TuneloopError(
                f"the Hub listed a file of {self.repo_id} that it then did not serve ({exc})",
                where=self.name,
                hint="run the pull again; the repo may have been changed while pulling",
            )
        if isinstance(exc, httpx2.TransportError | LocalEntryNotFoundError | ConnectionError | TimeoutError):
            broke = isinstance(exc, httpx2.RemoteProtocolError | httpx2.ReadError | httpx2.ReadTimeout)
            what = "the connection to" if broke else "cannot reach"
            return TuneloopError(
                f"{what} the Hugging Face Hub at {self.endpoint}{' broke' if broke else ''} ({type(exc).__name__})",
                where=self.name,
                hint=(
                    "check the network (and HTTPS_PROXY, HF_ENDPOINT) and run the pull again: files already "
                    "fetched are kept. Without internet here, pull on another machine and copy its Hugging Face "
                    "cache (HF_HUB_CACHE) to this one"
                ),
            )
        if isinstance(exc, HfHubHTTPError):
            status = exc.response.status_code if exc.response is not None else "?"
            return TuneloopError(
                f"the Hub at {self.endpoint} answered HTTP {status} for {self.repo_id}: {str(exc).splitlines()[0]}",
                where=self.name,
                hint="run the pull again later; a 401 or 403 means logging in (`hf auth login`, or HF_TOKEN)",
            )
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return self.disk_full(None, None)
        return None


class _Translating:
    def __init__(self, context: _Context) -> None:
        self.context = context

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _tb: object) -> bool:
        if exc is None or isinstance(exc, TuneloopError):
            return False
        translated = self.context.translate(exc)
        if translated is None:
            return False
        raise translated from None


def _is_file(entry: Any) -> bool:
    from huggingface_hub.hf_api import RepoFile

    return isinstance(entry, RepoFile)


def _size(entry: RepoFile) -> int:
    return entry.lfs.size if entry.lfs is not None else entry.size


def _pulled_file(entry: RepoFile) -> PulledFile:
    return PulledFile(
        path=entry.path,
        size=_size(entry),
        lfs=entry.lfs is not None,
        sha256=entry.lfs.sha256 if entry.lfs is not None else None,
        git_sha1=entry.blob_id,
    )


def _gguf_repo_license(snapshot: Path, chosen: list[str]) -> Any:
    gguf = next(path for path in chosen if path.lower().endswith(".gguf"))
    return find_license(gguf_path=snapshot / gguf, folder=snapshot)


def _saved_token() -> str | None:
    from huggingface_hub import get_token

    return get_token()


def _write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _human(size: int | None) -> str:
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"

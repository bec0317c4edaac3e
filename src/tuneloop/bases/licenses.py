"""Where a base's license is read: its catalog entry, its GGUF metadata, its model card.

First found wins:

1. the catalog, for bundled bases (``BundledBase.license``, set in ``resolve.py``);
2. GGUF metadata: ``general.license`` (``general.license.name`` when that says ``other``), read from the
   header only (``gguf_metadata.py``);
3. the model card: the ``license:`` of ``README.md``'s YAML front matter (``license_name:`` when it says
   ``other``), as the Hugging Face Hub shows it;
4. else ``unknown``.

The ids it is compared as are ``tuneloop.licenses``'s.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

from tuneloop.bases.gguf_metadata import read_gguf_metadata
from tuneloop.errors import TuneloopError
from tuneloop.licenses import UNKNOWN_LICENSE, License, normalize_license


def find_license(*, gguf_path: Path | None = None, folder: Path | None = None) -> License:
    """The license of a local base: GGUF metadata, else the model card in ``folder``, else unknown."""
    if gguf_path is not None:
        found = gguf_license(gguf_path)
        if found is not None:
            return License(text=found, id=normalize_license(found), source="gguf")
        folder = folder or gguf_path.parent
    if folder is not None:
        found = model_card_license(folder)
        if found is not None:
            return License(text=found, id=normalize_license(found), source="model card")
    return UNKNOWN_LICENSE


def gguf_license(path: Path) -> str | None:
    """``general.license`` of a GGUF file (``general.license.name`` when it says ``other``), or None."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return _gguf_license(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _gguf_license(path: str, _size: int, _mtime_ns: int) -> str | None:  # cached per file version
    try:
        metadata = read_gguf_metadata(Path(path))
    except TuneloopError:
        return None
    text = metadata.get("general.license")
    if isinstance(text, str) and text.strip().lower() == "other":
        text = metadata.get("general.license.name") or text
    return text.strip() if isinstance(text, str) and text.strip() else None


def model_card_license(folder: Path) -> str | None:
    """The ``license:`` of ``README.md``'s YAML front matter (``license_name:`` for ``other``), if any."""
    try:
        card = (folder / "README.md").read_text(encoding="utf-8", errors="replace")[:20_000]
    except OSError:
        return None
    meta = card_metadata(card)
    if meta is None:
        return None
    value = meta.get("license")
    if isinstance(value, list):  # the Hub allows a list; the first is the model's own
        value = value[0] if value else None
    if str(value).strip().lower() == "other" and isinstance(meta.get("license_name"), str):
        value = meta["license_name"]
    return str(value).strip() if value not in (None, "") else None


def card_metadata(card: str) -> dict[str, Any] | None:
    """A model card's YAML front matter (the Hub's ``cardData``), or None when it has none."""
    front = re.match(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(\r?\n|\Z)", card, flags=re.DOTALL)
    if front is None:
        return None
    import yaml

    try:
        meta = yaml.safe_load(front.group(1))
    except yaml.YAMLError:
        return None
    return meta if isinstance(meta, dict) else None

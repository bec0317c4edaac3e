"""Model licenses as ids: normalized for comparison, checked in a task's ``licenses:``, allowed or not.

A base's license is read from its catalog entry or its files (``bases/licenses.py``) and kept as written
(``Apache-2.0``, ``Gemma Terms of Use``) for display; ``normalize_license`` maps it to a lowercase,
SPDX-like id (``apache-2.0``, ``gemma``, ``llama3.1``): the Hugging Face Hub's own license ids, which tasks
list in ``licenses:`` (task.py) and promotion compares (registry/promotion.py). Core, because the task spec
validates its ids here.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

LicenseSource = Literal["catalog", "gguf", "model card", "hub", "none"]

UNKNOWN = "unknown"

# The Hugging Face Hub's license ids (https://huggingface.co/docs/hub/repositories-licenses), plus the
# `license_name`s of well-known "other" licenses. Ids outside this list are accepted when they are not a
# near-miss of one in it (a typo of "mit" is refused; an in-house "acme-model-license" is not).
KNOWN_LICENSES: tuple[str, ...] = (
    "apache-2.0",
    "mit",
    "openrail",
    "openrail++",
    "bigscience-openrail-m",
    "creativeml-openrail-m",
    "bigscience-bloom-rail-1.0",
    "bigcode-openrail-m",
    "afl-3.0",
    "artistic-2.0",
    "bsl-1.0",
    "bsd",
    "bsd-2-clause",
    "bsd-3-clause",
    "bsd-3-clause-clear",
    "c-uda",
    "cc",
    "cc0-1.0",
    "cc-by-2.0",
    "cc-by-2.5",
    "cc-by-3.0",
    "cc-by-4.0",
    "cc-by-sa-3.0",
    "cc-by-sa-4.0",
    "cc-by-nc-2.0",
    "cc-by-nc-3.0",
    "cc-by-nc-4.0",
    "cc-by-nd-4.0",
    "cc-by-nc-nd-3.0",
    "cc-by-nc-nd-4.0",
    "cc-by-nc-sa-2.0",
    "cc-by-nc-sa-3.0",
    "cc-by-nc-sa-4.0",
    "cdla-sharing-1.0",
    "cdla-permissive-1.0",
    "cdla-permissive-2.0",
    "wtfpl",
    "ecl-2.0",
    "epl-1.0",
    "epl-2.0",
    "etalab-2.0",
    "eupl-1.1",
    "eupl-1.2",
    "agpl-3.0",
    "gfdl",
    "gpl",
    "gpl-2.0",
    "gpl-3.0",
    "lgpl",
    "lgpl-2.1",
    "lgpl-3.0",
    "isc",
    "h-research",
    "intel-research",
    "lppl-1.3c",
    "ms-pl",
    "apple-ascl",
    "apple-amlr",
    "mpl-2.0",
    "odc-by",
    "odbl",
    "openmdw-1.0",
    "osl-3.0",
    "postgresql",
    "ofl-1.1",
    "ncsa",
    "unlicense",
    "zlib",
    "pddl",
    "lgpl-lr",
    "deepfloyd-if-license",
    "fair-noncommercial-research-license",
    "llama2",
    "llama3",
    "llama3.1",
    "llama3.2",
    "llama3.3",
    "llama4",
    "gemma",
    "grok2-community",
    # well-known license_name values of `license: other`
    "qwen",
    "qwen-research",
    "tongyi-qianwen",
    "deepseek",
    "falcon-llm",
    "nvidia-open-model-license",
    "other",
    UNKNOWN,
)

# Ways people write the same license, after lowercasing and turning spaces/underscores into "-".
_ALIASES: dict[str, str] = {
    "apache": "apache-2.0",
    "apache2": "apache-2.0",
    "apache-2": "apache-2.0",
    "apache2.0": "apache-2.0",
    "apache-license-2.0": "apache-2.0",
    "apache-license-version-2.0": "apache-2.0",
    "apache-license,-version-2.0": "apache-2.0",
    "the-apache-license-2.0": "apache-2.0",
    "mit-license": "mit",
    "the-mit-license": "mit",
    "gemma-terms-of-use": "gemma",
    "gemma-license": "gemma",
    "llama-2": "llama2",
    "llama-2-community-license": "llama2",
    "llama-3": "llama3",
    "llama-3-community-license": "llama3",
    "llama-3.1": "llama3.1",
    "llama-3.1-community-license": "llama3.1",
    "llama-3.2": "llama3.2",
    "llama-3.2-community-license": "llama3.2",
    "llama-3.3": "llama3.3",
    "llama-3.3-community-license": "llama3.3",
    "llama-4": "llama4",
    "gpl-3.0-only": "gpl-3.0",
    "gpl-3.0-or-later": "gpl-3.0",
    "gpl-2.0-only": "gpl-2.0",
    "gpl-2.0-or-later": "gpl-2.0",
    "agpl-3.0-only": "agpl-3.0",
    "agpl-3.0-or-later": "agpl-3.0",
    "lgpl-3.0-only": "lgpl-3.0",
    "lgpl-2.1-only": "lgpl-2.1",
    "bsd-3": "bsd-3-clause",
    "bsd-2": "bsd-2-clause",
    "cc0": "cc0-1.0",
    "public-domain": "pddl",
    "none": UNKNOWN,
    "": UNKNOWN,
}

_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")


@dataclass(frozen=True)
class License:
    """A license as found (``text``) and as compared (``id``), with where it was read."""

    text: str
    id: str
    source: LicenseSource

    @property
    def known(self) -> bool:
        return self.id != UNKNOWN

    def describe(self) -> str:
        """``Apache-2.0 (apache-2.0), from the catalog``: as written, the id it compares as, where it was read."""
        if not self.known:
            return "unknown (no license in the catalog, the GGUF metadata or the model card)"
        where = {"catalog": "the catalog", "gguf": "the GGUF metadata", "model card": "the model card"}
        shown = self.text if self.text == self.id else f"{self.text} ({self.id})"
        return f"{shown}, from {where.get(self.source, self.source)}"


UNKNOWN_LICENSE = License(text=UNKNOWN, id=UNKNOWN, source="none")


def normalize_license(text: str | None) -> str:
    """A license as written → its lowercase id: ``Apache-2.0`` → ``apache-2.0``, ``Llama 3.1`` → ``llama3.1``."""
    if text is None:
        return UNKNOWN
    slug = re.sub(r"[\s_]+", "-", text.strip().strip("'\"").lower())
    if slug.startswith(UNKNOWN):
        return UNKNOWN
    slug = _ALIASES.get(slug, slug)
    if slug not in KNOWN_LICENSES and slug.endswith("-license"):
        slug = _ALIASES.get(slug.removesuffix("-license"), slug.removesuffix("-license"))
    return slug


def check_license_id(text: str) -> str:
    """The id of a license a task allows; ValueError (the message says why, and the likely fix) if it is not one."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("a license id must be a non-empty string, such as apache-2.0 or mit")
    license_id = normalize_license(text)
    if not _ID_PATTERN.match(license_id):
        raise ValueError(f"{text!r} is not a license id (lowercase letters, digits, '.', '+', '-'), e.g. apache-2.0")
    if license_id not in KNOWN_LICENSES:
        close = difflib.get_close_matches(license_id, KNOWN_LICENSES, n=1, cutoff=0.6)
        if close:
            raise ValueError(
                f"{text!r} is not a license id tuneloop knows; did you mean {close[0]!r}? "
                "(ids are the Hugging Face Hub's: apache-2.0, mit, gemma, llama3.1, …)"
            )
    return license_id


def license_allowed(license_id: str, allowed: Iterable[str] | None) -> bool:
    """Whether a base with ``license_id`` may be used where ``allowed`` (None: anything) applies."""
    return allowed is None or normalize_license(license_id) in {normalize_license(item) for item in allowed}

"""Where tuneloop keeps its state, read from the environment at call time.

``TUNELOOP_HOME`` (default ``~/.tuneloop``) holds the SQLite database, artifacts and caches;
``TUNELOOP_DATABASE_URL`` points the store at another database (PostgreSQL beyond one machine).
``$TUNELOOP_HOME/config.yaml`` (optional) holds what is not a path: upstream APIs, price overrides,
the self-hosted machine's $/hour. ``read_config_file`` is its one reader; each stage validates its
own section of it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop.errors import TuneloopError


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str

    @property
    def artifacts_dir(self) -> Path:
        """Trained adapters, reports and other outputs that outlive a run."""
        return self.home / "artifacts"

    @property
    def cache_dir(self) -> Path:
        """Derived files that can be rebuilt (converted base weights, exported adapters)."""
        return self.home / "cache"

    @property
    def tasks_dir(self) -> Path:
        """User task specs found by name, beside the ones shipped in the package."""
        return self.home / "tasks"

    @property
    def config_file(self) -> Path:
        """Optional YAML: ``upstreams``, ``prices``, ``machine_usd_per_hour`` (see docs/evals.md)."""
        return self.home / "config.yaml"

    @property
    def uses_default_sqlite(self) -> bool:
        return "TUNELOOP_DATABASE_URL" not in os.environ


def get_settings() -> Settings:
    home = Path(os.environ.get("TUNELOOP_HOME") or Path.home() / ".tuneloop").expanduser()
    url = os.environ.get("TUNELOOP_DATABASE_URL") or f"sqlite:///{home / 'tuneloop.db'}"
    return Settings(home=home, database_url=url)


def read_config_file(path: Path | None = None) -> dict[str, Any]:
    """The user's config file as a mapping; ``{}`` when there is none.

    Only the YAML is checked here; a stage that reads a section (``upstreams``, ``prices``) validates
    it and names ``config.yaml: section.key`` in its errors.
    """
    import yaml

    path = path or get_settings().config_file
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise TuneloopError(f"not valid YAML: {problem}", where=where, hint="fix the YAML syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TuneloopError("the config file must be a YAML mapping (upstreams:, prices:, ...)", where=str(path))
    return data


def config_entry_error(exc: Any, where: str, keys: str) -> TuneloopError:
    """A pydantic ValidationError in one entry of the config file, as an error naming the key.

    An unknown key is reported before anything else: it is usually a misspelling of the key that is
    then reported missing.
    """
    errors = sorted(exc.errors(), key=lambda error: error["type"] != "extra_forbidden")
    error = errors[0]
    key = ".".join(str(part) for part in error["loc"])
    message = {"extra_forbidden": "unknown key (check its spelling)", "missing": "missing (it is required)"}.get(
        error["type"], error["msg"].removeprefix("Value error, ")
    )
    return TuneloopError(message, where=f"{where}.{key}" if key else where, hint=f"keys: {keys}")

"""Where tuneloop keeps its state, read from the environment at call time.

``TUNELOOP_HOME`` (default ``~/.tuneloop``) holds the SQLite database, artifacts and caches;
``TUNELOOP_DATABASE_URL`` points the store at another database (PostgreSQL beyond one machine).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


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
    def uses_default_sqlite(self) -> bool:
        return "TUNELOOP_DATABASE_URL" not in os.environ


def get_settings() -> Settings:
    home = Path(os.environ.get("TUNELOOP_HOME") or Path.home() / ".tuneloop").expanduser()
    url = os.environ.get("TUNELOOP_DATABASE_URL") or f"sqlite:///{home / 'tuneloop.db'}"
    return Settings(home=home, database_url=url)

"""A scratch TUNELOOP_HOME for a benchmark run, sharing your converted bases (shared by the benchmarks)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def scratch_home(prefix: str) -> Path:
    """A new empty home, set as TUNELOOP_HOME, whose cache is your ~/.tuneloop/cache when there is one (the
    bundled base's transformers conversion then is not made again, ~20 s)."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ["TUNELOOP_HOME"] = str(home)
    user_cache = Path.home() / ".tuneloop" / "cache"
    if user_cache.is_dir():
        (home / "cache").symlink_to(user_cache)
    return home

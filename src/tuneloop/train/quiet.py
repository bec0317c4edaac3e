"""Library chatter off while tuneloop trains: its own progress bar and lines are the only output.

transformers, datasets and huggingface_hub draw tqdm bars ("Saving the dataset", "Loading weights",
"Writing model shards") and warn about their own API churn (FutureWarnings about renamed arguments that
tuneloop never passes itself). ``quiet_libraries()`` turns those off for the calls inside it, at their
source (each library's own progress-bar and verbosity switches, and ``warnings`` filters scoped to the
block), and restores everything after: a caller's own use of these libraries is untouched.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import warnings
from collections.abc import Iterator
from typing import Any

# UserWarnings silenced by the module that raises them (deprecations of every origin are, inside the block).
_LIBRARIES = r"(transformers|trl|peft|datasets|accelerate|torch|huggingface_hub)(\.|$)"


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """No third-party progress bars, info logs or deprecation warnings inside the block."""
    restores = []
    # datasets and transformers share one logging API (verbosity, progress bars): quieted the same way.
    for name in ("datasets.utils.logging", "transformers.utils.logging"):
        try:
            library = importlib.import_module(name)
        except ImportError:
            continue
        was_enabled, level = library.is_progress_bar_enabled(), library.get_verbosity()
        library.disable_progress_bar()
        library.set_verbosity_error()
        restores.append(functools.partial(_restore_logging, library, level, was_enabled))
    try:
        import huggingface_hub.utils as hub_utils

        hub_was_disabled = hub_utils.are_progress_bars_disabled()
        hub_utils.disable_progress_bars()
        restores.append(lambda: hub_was_disabled or hub_utils.enable_progress_bars())
    except ImportError:
        pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", category=UserWarning, module=_LIBRARIES)
            yield
    finally:
        for restore in reversed(restores):
            restore()


def _restore_logging(library: Any, level: int, progress_bars: bool) -> None:
    library.set_verbosity(level)
    if progress_bars:
        library.enable_progress_bar()

"""Library chatter off while tuneloop trains: its own progress bar and lines are the only output.

transformers, datasets and huggingface_hub draw tqdm bars ("Saving the dataset", "Loading weights",
"Writing model shards") and warn about their own API churn (FutureWarnings about renamed arguments that
tuneloop never passes itself). ``quiet_libraries()`` turns those off for the calls inside it, at their
source (each library's own progress-bar and verbosity switches, and ``warnings`` filters scoped to the
block), and restores everything after: a caller's own use of these libraries is untouched.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

# UserWarnings silenced by the module that raises them (deprecations of every origin are, inside the block).
_LIBRARIES = r"(transformers|trl|peft|datasets|accelerate|torch|huggingface_hub)(\.|$)"


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """No third-party progress bars, info logs or deprecation warnings inside the block."""
    restores = []
    try:
        import datasets.utils.logging as datasets_logging

        was_enabled = datasets_logging.is_progress_bar_enabled()
        datasets_logging.disable_progress_bar()
        level = datasets_logging.get_verbosity()
        datasets_logging.set_verbosity_error()
        restores.append(
            lambda: (datasets_logging.set_verbosity(level), was_enabled and datasets_logging.enable_progress_bar())
        )
    except ImportError:
        pass
    try:
        import transformers.utils.logging as transformers_logging

        was_enabled_tf = transformers_logging.is_progress_bar_enabled()
        transformers_logging.disable_progress_bar()
        level_tf = transformers_logging.get_verbosity()
        transformers_logging.set_verbosity_error()
        restores.append(
            lambda: (
                transformers_logging.set_verbosity(level_tf),
                was_enabled_tf and transformers_logging.enable_progress_bar(),
            )
        )
    except ImportError:
        pass
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

"""Fine-tuning: LoRA SFT with TRL + PEFT, from a dataset to a registered, immutable ``task@N``.

``train(task, data, base, config)`` is the whole stage (``api.py``); the recipe one process runs is
``recipe.py``; ``data.py`` checks and tokenizes before launching; ``config.py`` holds the defaults.
"""

from tuneloop.train.api import TrainResult, merge_adapter, train

__all__ = ["TrainResult", "merge_adapter", "train"]

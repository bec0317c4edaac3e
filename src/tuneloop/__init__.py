"""tuneloop: from an expensive API model to a small fine-tuned open model in production."""

__version__ = "0.1.0"

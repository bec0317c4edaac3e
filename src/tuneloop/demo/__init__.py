"""The demo: the whole loop on the bundled model and a synthetic task, on a laptop CPU.

- ``run.py``: the ``tuneloop demo`` flow (:func:`tuneloop.demo.run.run_demo`), a thin walk through the
  stages' library calls.
- ``synth/``: the demo task's document generator (loan-servicer letters, statements, emails... with their
  verified answers), also behind ``tuneloop data synth``. Importing it does not import the flow's stages.
- ``receipts/``: the receipt-extraction task's generator (noisy OCR receipts); ``generators.py`` picks a
  task's generator for ``data synth --task`` and ``demo --task``.
"""

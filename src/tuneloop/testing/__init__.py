"""Tools for tests, benchmarks and trying a config: not part of any stage, never imported by one.

- ``fake_upstream.py``: a fast OpenAI-compatible upstream with fault injection and a model's latency
  (``python -m tuneloop.testing.fake_upstream --fault-rate 0.1``).
- ``loadtest.py``: a closed-loop load generator (keep-alive connections, latency percentiles).
- ``traffic.py``: prompts sent through an endpoint with the official client (e.g. through the gateway).
"""

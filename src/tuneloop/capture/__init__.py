"""Capture: LLM traffic into the store, through the gateway or the SDK wrapper (see docs/capture.md).

- ``gateway.py`` / ``server.py``: the OpenAI-compatible proxy and how it runs (the server mounts the web UI
  when asked); ``config.py`` its YAML; ``routing.py`` which upstream answers a model name;
  ``forwarding.py`` the upstream calls (retries, fallbacks). Upstreams are defined in the core
  (``tuneloop.upstreams``).
- ``records.py`` one captured call; ``logwriter.py`` the bounded queue, batched commits and durable journal;
  ``redaction.py`` what is scrubbed before storage. API keys live in ``tuneloop.store.keys``.
- ``sdk.py``: ``tuneloop.OpenAI`` / ``AsyncOpenAI``. Calls are read back with ``tuneloop.store.logs``; the
  fake upstream and load generator for tests and benchmarks are in ``tuneloop.testing``.
"""

"""Capture: LLM traffic into the store, through the gateway or the SDK wrapper (see docs/capture.md).

- ``gateway.py`` / ``server.py``: the OpenAI-compatible proxy and how it runs; ``config.py`` its YAML;
  ``routing.py`` which upstream answers a model name; ``forwarding.py`` the upstream calls (retries,
  fallbacks); ``upstreams.py`` the one definition of an upstream.
- ``records.py`` one captured call; ``logwriter.py`` the bounded queue, batched commits and durable journal;
  ``redaction.py`` what is scrubbed before storage; ``keys.py`` tuneloop API keys.
- ``sdk.py``: ``tuneloop.OpenAI`` / ``AsyncOpenAI``; ``logs.py`` reading calls back; ``traffic.py`` sending
  prompts through an endpoint.
- ``fake_upstream.py`` and ``loadtest.py``: a fast fake upstream and a load generator, for tests and benchmarks.
"""

"""Turning a model id into something that answers: a local base, a registry version, or an endpoint.

``resolve_candidate`` reads the id with the one grammar (``tuneloop.registry.ids``) and decides, without
loading anything, what exactly will run (its ``identity``, part of the cache key), how it is labelled
and how its requests are costed. ``Candidate.load()`` then starts it: a local backend (llama.cpp by
default for a GGUF base, transformers on request) or the official ``openai`` client for an endpoint.
A run whose answers are all cached never loads the model.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import httpx

from tuneloop.bases import Base, base_weights_hash, resolve_base
from tuneloop.bases.widen import check_llamacpp_weights
from tuneloop.cost import UNKNOWN_COST, CostBasis, PriceTable, machine_cost_basis, token_cost_basis
from tuneloop.errors import TuneloopError
from tuneloop.generation import GenerationParams, Message
from tuneloop.registry.ids import BaseRef, EndpointRef, VersionRef, parse_model_id
from tuneloop.serve.backends import (
    BACKEND_NAMES,
    CPU_BACKEND_NAMES,
    Adapter,
    Backend,
    BackendOptions,
    TrainedPrompt,
    backend_options,
    engine_identity,
    get_backend,
)
from tuneloop.upstreams import Endpoint, resolve_endpoint, sampling_arguments

ModelKind = Literal["local", "endpoint"]


@dataclass(frozen=True)
class ModelSpec:
    """A model to evaluate: its id, and for local models the engine (default: llama.cpp for GGUF)."""

    model: str
    backend: str | None = None
    backend_options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class Completion:
    """One answer, timed from the caller's side.

    ``latency_ms`` and ``ttft_ms`` include any wait for a busy engine; ``engine_ms`` is the time a local
    engine itself was busy with the request (the machine time that self-hosted cost is based on).
    """

    text: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cached_tokens: int | None
    latency_ms: float
    ttft_ms: float | None
    engine_ms: float | None = None


class RequestFailed(Exception):
    """This request failed (e.g. the prompt is too long): recorded for its example, the run goes on."""


class RequestCancelled(Exception):
    """The run was interrupted while this request was under way."""


class EndpointFailure(TuneloopError):
    """The endpoint cannot serve this run at all (unreachable, refused the key, no such model)."""


class Generator(Protocol):
    def complete(self, messages: list[Message], params: GenerationParams, stop: threading.Event) -> Completion: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Candidate:
    label: str  # shown in tables and stored with every result
    requested: str  # what the user wrote
    identity: str  # what runs, precisely (weights hash + engine, or URL + model): part of the cache key
    kind: ModelKind
    cost: CostBasis
    # Local engines run one request at a time (their lock), so their machine time is their own time.
    one_at_a_time: bool
    loader: Callable[[], Generator] = field(repr=False, compare=False)
    # Decodes under the task's output schema, as `tuneloop serve` answers for a task version by default;
    # the eval measures the version as it will be served.
    structured: bool = False
    base: str | None = None  # a local model's base id
    license: str | None = None  # its base's license as written (bases/licenses.py); None for an endpoint

    def load(self) -> Generator:
        return self.loader()

    def describe(self) -> dict[str, Any]:
        """What a run records about this model (its config)."""
        return {
            "label": self.label,
            "requested": self.requested,
            "identity": self.identity,
            "kind": self.kind,
            "structured": self.structured,
            "cost_basis": self.cost.description,
            "base": self.base,
            "license": self.license,
        }


def resolve_candidate(spec: ModelSpec, prices: PriceTable, *, stream: bool = True) -> Candidate:
    """What ``spec`` names, ready to load; raises TuneloopError naming the model id when it can't be."""
    ref = parse_model_id(spec.model)
    # An eval runs a local model in this process; vLLM runs as a server, which is evaluated by its URL.
    if spec.backend is not None and spec.backend not in CPU_BACKEND_NAMES:
        raise TuneloopError(
            f"unknown backend {spec.backend!r}" if spec.backend not in BACKEND_NAMES else "vllm runs as a server",
            where="--backend",
            hint="use one of: " + ", ".join(CPU_BACKEND_NAMES) + "; to evaluate on vLLM, `tuneloop serve --backend "
            "vllm` and give its URL as the model (http://host:port/v1#model)",
        )
    if isinstance(ref, BaseRef):
        return _base_candidate(spec, resolve_base(ref.name), prices)
    if isinstance(ref, VersionRef):
        return _version_candidate(ref, spec, prices)
    if spec.backend is not None:
        raise TuneloopError(
            "--backend applies to local models; this one is behind an endpoint", where=f"model {spec.model}"
        )
    return _endpoint_candidate(spec, ref, prices, stream=stream)


def _version_candidate(ref: VersionRef, spec: ModelSpec, prices: PriceTable) -> Candidate:
    """A registry version (``task@3``, ``task@sha256:…``, ``task@prod``) as its adapter over its base.

    An alias is resolved here, once: the label and every stored result name the immutable version
    (``task@3``), and the identity (part of the cache key) is its content hash and the engine. The
    registry verifies the version's files against that hash when resolving.
    """
    from tuneloop.registry import resolve_version as resolve_registered
    from tuneloop.registry.versions import version_base_license

    info = resolve_registered(ref)
    base = resolve_base(info.base_id)
    backend_name, options, engine = _local_engine(spec, base)
    label = info.id if engine == default_backend(base) else f"{info.id} [{engine}]"

    def load() -> Generator:
        from tuneloop.registry.exports import ensure_gguf_lora

        # llama.cpp applies a GGUF LoRA (exported once per version, cached); transformers the PEFT folder.
        gguf = ensure_gguf_lora(info) if backend_name == "llamacpp" else None
        # A distilled version answers with the prompt it was trained with, as `tuneloop serve` serves it.
        adapter = Adapter(id=info.id, peft_dir=info.adapter_path, gguf_path=gguf, prompt=TrainedPrompt.of(info))
        return LocalGenerator(get_backend(backend_name, base, options), adapter)

    return Candidate(
        label=label,
        requested=spec.model,
        identity=f"{info.hash_ref}|{engine}",
        kind="local",
        cost=machine_cost_basis(prices),
        one_at_a_time=True,
        loader=load,
        structured=True,
        base=info.base_id,
        license=version_base_license(info).text,
    )


# --- local bases ---------------------------------------------------------------------------------


def default_backend(base: Base) -> str:
    return "llamacpp" if base.format == "gguf" else "transformers"


def _local_engine(spec: ModelSpec, base: Base) -> tuple[str, BackendOptions, str]:
    """The backend a local model runs on, its options, and the engine identity its answers are cached under."""
    backend_name = spec.backend or default_backend(base)
    if "weights" in spec.backend_options:
        if backend_name != "llamacpp":
            raise TuneloopError(
                f"--llamacpp-weights applies to the llamacpp backend; {spec.model} runs on {backend_name}",
                where=f"model {spec.model}",
                hint="drop --llamacpp-weights, or add --backend llamacpp",
            )
        check_llamacpp_weights(base, spec.backend_options["weights"])
    values = dict(spec.backend_options)
    if backend_name == "llamacpp":
        values.setdefault("n_threads", "auto")  # the fastest count on this machine now (threads.py)
    options = backend_options(backend_name, values)
    return backend_name, options, engine_identity(backend_name, options)


def _base_candidate(spec: ModelSpec, base: Base, prices: PriceTable) -> Candidate:
    backend_name, options, engine = _local_engine(spec, base)
    label = base.id if engine == default_backend(base) else f"{base.id} [{engine}]"
    identity = f"{base.id}|sha256:{base_weights_hash(base)}|{engine}"
    return Candidate(
        label=label,
        requested=spec.model,
        identity=identity,
        kind="local",
        cost=machine_cost_basis(prices),
        one_at_a_time=True,
        loader=lambda: LocalGenerator(get_backend(backend_name, base, options)),
        base=base.id,
        license=base.license,
    )


class LocalGenerator:
    """A local backend (with a version's adapter, or the bare base), timed as its callers see it."""

    def __init__(self, backend: Backend, adapter: Adapter | None = None) -> None:
        self.backend, self.adapter = backend, adapter

    def complete(self, messages: list[Message], params: GenerationParams, stop: threading.Event) -> Completion:
        if stop.is_set():
            raise RequestCancelled
        started = time.perf_counter()
        try:
            generation = self.backend.generate(messages, params, adapter=self.adapter)
        except TuneloopError as exc:  # e.g. a prompt longer than the context: this example only
            raise RequestFailed(str(exc)) from None
        latency_ms = (time.perf_counter() - started) * 1000
        waited_ms = max(0.0, latency_ms - generation.latency_ms)  # queued behind other requests
        return Completion(
            text=generation.text,
            finish_reason=generation.finish_reason,
            prompt_tokens=generation.prompt_tokens,
            completion_tokens=generation.completion_tokens,
            cached_tokens=None,
            latency_ms=latency_ms,
            ttft_ms=None if generation.ttft_ms is None else waited_ms + generation.ttft_ms,
            engine_ms=generation.latency_ms,
        )

    def close(self) -> None:
        self.backend.close()


# --- endpoints -----------------------------------------------------------------------------------


def _endpoint_candidate(spec: ModelSpec, ref: EndpointRef, prices: PriceTable, *, stream: bool) -> Candidate:
    endpoint = resolve_endpoint(ref, spec.model).require_key(f"model {spec.model}")
    upstream = endpoint.upstream
    priced = prices.lookup(ref.model, ref.upstream)
    if priced is not None:
        cost = token_cost_basis(*priced, prices)
    elif ref.upstream is None or (upstream is not None and upstream.self_hosted):
        cost = machine_cost_basis(prices)  # an endpoint URL or a self-hosted upstream: you pay the machine
    else:
        cost = UNKNOWN_COST
    return Candidate(
        label=spec.model,
        requested=spec.model,
        identity=f"{endpoint.base_url}#{ref.model}",
        kind="endpoint",
        cost=cost,
        one_at_a_time=False,
        loader=lambda: EndpointGenerator(endpoint, stream=stream),
    )


class EndpointGenerator:
    """An OpenAI-compatible endpoint through the official client, streaming to time the first token.

    The client retries connection errors, 408/409/429 and 5xx ``max_retries`` times with backoff; what
    still fails after that stops the run (``EndpointFailure``), keeping the answers already stored.
    """

    def __init__(self, endpoint: Endpoint, *, stream: bool = True) -> None:
        self.label, self.base_url, self.model, self.stream = endpoint.name, endpoint.base_url, endpoint.model, stream
        self.timeout_s, self.attempts = endpoint.timeout_s, endpoint.max_retries + 1
        self.client = endpoint.client()

    def complete(self, messages: list[Message], params: GenerationParams, stop: threading.Event) -> Completion:
        import openai

        if stop.is_set():
            raise RequestCancelled
        arguments = sampling_arguments(self.model, params)
        if params.json_schema is not None:  # a judge's verdict (evals/judge.py), as the endpoint's structured output
            arguments["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": params.json_schema, "strict": True},
            }
        try:
            if self.stream:
                return self._streamed(messages, arguments, stop)
            return self._whole(messages, arguments)
        except openai.APITimeoutError:
            raise EndpointFailure(
                f"no answer within {self.timeout_s:g} s, {self.attempts} attempts",
                where=f"model {self.label}",
                hint="check the server's load, or raise timeout_s for this upstream in config.yaml",
            ) from None
        except openai.APIConnectionError as exc:
            cause = exc.__cause__ or exc
            raise EndpointFailure(
                f"cannot reach {self.base_url} after {self.attempts} attempts: {cause}",
                where=f"model {self.label}",
                hint="check that the server is running and the URL (scheme, host, port, /v1) is right",
            ) from None
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            raise EndpointFailure(
                f"the endpoint refused the API key (HTTP {exc.status_code}): {_api_message(exc)}",
                where=f"model {self.label}",
                hint="check the key in the environment variable named by the upstream's api_key_env",
            ) from None
        except openai.NotFoundError as exc:
            raise EndpointFailure(
                f"HTTP 404 from {self.base_url}: {_api_message(exc)}",
                where=f"model {self.label}",
                hint=f"check the model name ({self.model!r}) and that the base URL ends where /chat/completions starts",
            ) from None
        except (openai.RateLimitError, openai.InternalServerError) as exc:
            raise EndpointFailure(
                f"HTTP {exc.status_code} after {self.attempts} attempts: {_api_message(exc)}",
                where=f"model {self.label}",
                hint="lower --concurrency, or wait and resume the run",
            ) from None
        except openai.APIStatusError as exc:  # 400/422: this request, not the endpoint
            raise RequestFailed(f"HTTP {exc.status_code}: {_api_message(exc)}") from None
        except openai.APIError as exc:  # an error event inside the stream
            raise RequestFailed(f"the endpoint reported an error: {_api_message(exc)}") from None
        except httpx.TransportError as exc:  # the connection broke mid-stream (the client retries only the start)
            raise EndpointFailure(
                f"the connection to {self.base_url} broke during an answer: {exc!r}",
                where=f"model {self.label}",
                hint="check the server, then resume the run",
            ) from None

    def _streamed(self, messages: list[Message], arguments: dict[str, Any], stop: threading.Event) -> Completion:
        started = time.perf_counter()
        first_token_at: float | None = None
        parts: list[str] = []
        finish_reason: str | None = None
        usage: Any = None
        chunks = self.client.chat.completions.create(
            model=self.model,
            messages=messages,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
            **arguments,
        )
        with chunks:
            for chunk in chunks:
                if stop.is_set():
                    raise RequestCancelled
                if chunk.usage is not None:
                    usage = chunk.usage
                for choice in chunk.choices:
                    if choice.delta.content:
                        first_token_at = first_token_at or time.perf_counter()
                        parts.append(choice.delta.content)
                    if choice.finish_reason:
                        finish_reason = choice.finish_reason
        finished = time.perf_counter()
        return Completion(
            text="".join(parts),
            finish_reason=finish_reason,
            prompt_tokens=getattr(usage, "prompt_tokens", None),
            completion_tokens=getattr(usage, "completion_tokens", None),
            cached_tokens=_cached_tokens(usage),
            latency_ms=(finished - started) * 1000,
            ttft_ms=None if first_token_at is None else (first_token_at - started) * 1000,
        )

    def _whole(self, messages: list[Message], arguments: dict[str, Any]) -> Completion:
        started = time.perf_counter()
        response = self.client.chat.completions.create(
            model=self.model,
            messages=messages,  # type: ignore[arg-type]
            **arguments,
        )
        latency_ms = (time.perf_counter() - started) * 1000
        choice = response.choices[0] if response.choices else None
        usage = response.usage
        return Completion(
            text=(choice.message.content or "") if choice else "",
            finish_reason=choice.finish_reason if choice else None,
            prompt_tokens=getattr(usage, "prompt_tokens", None),
            completion_tokens=getattr(usage, "completion_tokens", None),
            cached_tokens=_cached_tokens(usage),
            latency_ms=latency_ms,
            ttft_ms=None,
        )

    def close(self) -> None:
        self.client.close()


def _cached_tokens(usage: Any) -> int | None:
    details = getattr(usage, "prompt_tokens_details", None)
    return getattr(details, "cached_tokens", None)


def _api_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
    return str(getattr(exc, "message", exc))

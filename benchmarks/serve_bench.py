"""Serve benchmarks, side by side in one run on this machine (results go in docs/benchmarks.md, Serve).

1. decode tokens/s of ``tuneloop serve`` (llamacpp, through HTTP and the openai client, streamed) ÷ raw
   llama-cpp-python on the same GGUF, same prompt, same thread count (goal ≥ 0.95);
2. p50 / p95 latency of the demo extraction request on a fine-tuned version (goal p50 ≤ 200 ms);
3. the cost of loading an adapter (verify + llama.cpp load; goal ≤ 100 ms); throughput with 20 versions
   round-robin ÷ one version, adapters loaded and evicted meanwhile, is ``serve_backends.py``'s;
4. the extraction request under the task grammar with token-first checking (the default) ÷ the whole
   vocabulary masked every step (llama.cpp's grammar sampler), same version, and whether their texts agree;
5. the same request on the GGUF as shipped and on its f16 / f32 rewrites (``--llamacpp-weights``), p50/p95;
6. the extraction levers, each alone, and ``all`` (serve's defaults: prefix cache, threads auto; forced tokens
   stay off), against the code before them (prefix cache off, forced tokens off, one thread: its answers are
   byte for byte those of the code before, see docs/benchmarks.md), the engines taking turns on the same demo
   test documents: p50 of each ÷ p50 before (goal ``all`` ≤ 0.5), and the share of fields identical to before
   (``all``: on ``--agreement-docs`` documents; goal ≥ 99 %).

Versions are random LoRAs registered in a temporary TUNELOOP_HOME (same shapes as a trained one; speed does
not depend on the values), unless ``--model task@N`` names a trained one in your home.

    .venv/bin/python benchmarks/serve_bench.py [--requests 20] [--threads 1]
    TUNELOOP_HOME=<demo home> .venv/bin/python benchmarks/serve_bench.py --model liability-extraction@1 \
        --only levers --requests 20 --agreement-docs 100
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

TASK = "liability-extraction"
TEXT = (
    "Payoff quote for loan ending 4821: $182,440.19 good through May 2. Escrow balance $2,310.55. "
    "Next payment due 2025-06-01 at 6.125%. Lakeview Loan Servicing."
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def alternate(engines: dict, messages: list[dict], params, adapter, requests: int) -> tuple[dict, dict]:
    """Time one request on each engine in turn, ``requests`` rounds after a warm-up round (adapter load);
    returns (ms per engine, the distinct texts per engine) and closes the engines."""
    timings: dict[str, list[float]] = {name: [] for name in engines}
    texts: dict[str, set[str]] = {name: set() for name in engines}
    try:
        for index in range(requests + 1):
            for name, engine in engines.items():
                started = time.perf_counter()
                text = engine.generate(messages, params, adapter=adapter).text
                if index:
                    timings[name].append((time.perf_counter() - started) * 1000)
                texts[name].add(text)
    finally:
        for engine in engines.values():
            engine.close()
    return timings, texts


def raw_decode_rate(gguf: Path, messages: list[dict], tokens: int, threads: int) -> float:
    """llama-cpp-python alone: the same chat prompt, greedy, decode tokens/s after the first token."""
    import llama_cpp

    from tuneloop.bases import DEFAULT_BASE, resolve_base
    from tuneloop.serve.backends import LlamaCppOptions
    from tuneloop.serve.backends.llamacpp import LlamaCppBackend

    formatter = LlamaCppBackend(
        resolve_base(DEFAULT_BASE), LlamaCppOptions(n_threads=threads)
    )  # the server's prompt rendering
    text = formatter.format_prompt(messages)
    formatter.close()
    llama = llama_cpp.Llama(model_path=str(gguf), n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False)
    try:
        prompt = llama.tokenize(text.encode(), add_bos=False, special=True)
        rates = []
        for _ in range(3):
            llama.reset()
            first = None
            count = 0
            for _token in llama.generate(prompt, temp=0.0, top_k=0, min_p=0.0, top_p=1.0, repeat_penalty=1.0):
                count += 1
                if first is None:
                    first = time.perf_counter()
                if count >= tokens:
                    break
            rates.append((count - 1) / (time.perf_counter() - first))
        return statistics.median(rates)
    finally:
        llama.close()


def served_decode_rate(client, model: str, messages: list[dict], tokens: int) -> float:
    rates = []
    for _ in range(3):
        first = last = None
        count = 0
        stream = client.chat.completions.create(
            model=model,
            messages=messages,
            max_tokens=tokens,
            stream=True,
            response_format={"type": "text"},
            stream_options={"include_usage": True},
        )
        for chunk in stream:
            if chunk.usage:
                count = chunk.usage.completion_tokens
            if chunk.choices and chunk.choices[0].delta.content:
                now = time.perf_counter()
                first = first or now
                last = now
        rates.append((count - 1) / (last - first))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20, help="requests per latency/throughput measurement")
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads (both sides)")
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--model", default=None, help="a trained version in your TUNELOOP_HOME (default: random)")
    parser.add_argument("--only", choices=["all", "levers"], default="all", help="levers: part 6 alone")
    parser.add_argument("--agreement-docs", type=int, default=100, help="documents for the same-answers check (6)")
    args = parser.parse_args()

    if args.model is None:
        os.environ["TUNELOOP_HOME"] = tempfile.mkdtemp(prefix="tuneloop-serve-bench-")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import openai

    from test_serve import register_random_version
    from tuneloop.bases import DEFAULT_BASE, base_weights_hash, resolve_base
    from tuneloop.serve.app import start_background_server
    from tuneloop.serve.engine import build_engine
    from tuneloop.task import load_task

    base = resolve_base(DEFAULT_BASE)
    messages = load_task(TASK).build_messages({"text": TEXT})
    if args.model is None:
        weights = base_weights_hash(base)
        folder = Path(os.environ["TUNELOOP_HOME"]) / "made"
        versions = [register_random_version(folder, seed, base_weights_hash=weights).id for seed in range(1, 7)]
    else:
        versions = [args.model]
    results: dict[str, object] = {"threads": args.threads, "cpu_count": os.cpu_count(), "load": os.getloadavg()}
    if args.only == "levers":
        results.update(extraction_levers(versions[0], args.requests, args.agreement_docs, args.threads))
        print(json.dumps(results, indent=1))
        return

    # 1. decode rate, raw vs served (base model, no grammar, so both decode the same tokens)
    raw = raw_decode_rate(base.path, messages, args.decode_tokens, args.threads)
    engine = build_engine(backend="llamacpp", threads=args.threads)
    server = start_background_server(engine)
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=600)
    try:
        served = served_decode_rate(client, base.id, messages, args.decode_tokens)
        results["decode_tok_s_raw"] = round(raw, 1)
        results["decode_tok_s_served"] = round(served, 1)
        results["decode_ratio"] = round(served / raw, 3)

        # 2. latency of the extraction request on a fine-tuned version (task schema grammar on)
        version = versions[0]
        client.chat.completions.create(model=version, messages=messages)  # warm: export, verify, load
        latencies, tokens = [], []
        for _ in range(args.requests):
            started = time.perf_counter()
            reply = client.chat.completions.create(model=version, messages=messages)
            latencies.append((time.perf_counter() - started) * 1000)
            tokens.append(reply.usage.completion_tokens)
        results["extraction_p50_ms"] = round(percentile(latencies, 0.5), 1)
        results["extraction_p95_ms"] = round(percentile(latencies, 0.95), 1)
        results["extraction_completion_tokens"] = statistics.median(tokens)

    finally:
        server.stop()

    # 2b. the extraction request under the task grammar: token-first (the default) vs the whole vocabulary
    #     masked every step (what llama.cpp's grammar sampler does), alternating, same version and prompt
    from tuneloop.bases.widen import LLAMA_WEIGHTS
    from tuneloop.registry.exports import ensure_gguf_lora
    from tuneloop.registry.versions import resolve_version, verify_version
    from tuneloop.serve.backends import Adapter, GenerationParams, LlamaCppOptions, get_backend

    info = resolve_version(versions[0], verify=False)
    adapter = Adapter(info.id, info.adapter_path, ensure_gguf_lora(info))
    grammar = GenerationParams(max_tokens=256, json_schema=load_task(TASK).output_schema)
    engines = {
        mode: get_backend(
            "llamacpp", base, LlamaCppOptions(n_threads=args.threads, grammar_first=mode == "token_first")
        )
        for mode in ("token_first", "whole_vocab")
    }
    timings, texts = alternate(engines, messages, grammar, adapter, args.requests)
    for mode, values in timings.items():
        results[f"grammar_{mode}_p50_ms"] = round(percentile(values, 0.5), 1)
    results["grammar_speedup"] = round(results["grammar_whole_vocab_p50_ms"] / results["grammar_token_first_p50_ms"], 3)
    results["grammar_same_text"] = texts["token_first"] == texts["whole_vocab"]

    # 2c. the same extraction request on the GGUF as shipped (Q4_1) and on its float rewrites (bases/widen.py),
    #     which decode what transformers decodes; alternating, same version and prompt
    by_weights = {
        weights: get_backend("llamacpp", base, LlamaCppOptions(n_threads=args.threads, weights=weights))
        for weights in LLAMA_WEIGHTS
    }
    weight_timings, _ = alternate(by_weights, messages, grammar, adapter, args.requests)
    for weights, values in weight_timings.items():
        results[f"extraction_{weights}_weights_p50_ms"] = round(percentile(values, 0.5), 1)
        results[f"extraction_{weights}_weights_p95_ms"] = round(percentile(values, 0.95), 1)

    # adapter load cost: verify (hash the files) + llama.cpp load, through the public backend path
    backend = get_backend("llamacpp", base, LlamaCppOptions(n_threads=args.threads, max_adapters=1))
    try:
        infos = [resolve_version(name, verify=False) for name in versions[:6]]
        adapters = [Adapter(i.id, i.adapter_path, ensure_gguf_lora(i)) for i in infos]
        one = GenerationParams(max_tokens=1, temperature=0.0)
        backend.generate(messages, one, adapter=adapters[0])
        loads, verifies = [], []
        for info, adapter in zip(infos[1:], adapters[1:], strict=True):
            started = time.perf_counter()
            verify_version(info, check_base=False)
            verifies.append((time.perf_counter() - started) * 1000)
            # The backend's own step for a version not in memory (LRU of 1: always evicted): load the GGUF
            # LoRA and set it on the context. Timed alone, since a generation's time would drown it.
            started = time.perf_counter()
            backend._use_adapter(adapter)
            loads.append((time.perf_counter() - started) * 1000)
            backend.generate(messages, one, adapter=adapter)
        results["adapter_load_ms_median"] = round(statistics.median(loads), 1) if loads else None
        results["adapter_verify_ms_median"] = round(statistics.median(verifies), 1) if verifies else None
    finally:
        backend.close()
    results.update(extraction_levers(versions[0], args.requests, args.agreement_docs, args.threads))
    print(json.dumps(results, indent=1))


def demo_test_messages(count: int) -> list[list[dict]]:
    """``count`` chats of the demo's test documents (the demo's generator, its test split)."""
    from tuneloop.demo.generators import synthesize
    from tuneloop.task import load_task

    task = load_task(TASK)
    rows = synthesize(task, count * 5, seed=20261204)
    tests = [row for row in rows if row["metadata"]["split"] == "test"][:count]
    return [[m for m in row["messages"] if m["role"] != "assistant"] for row in tests]


def extraction_levers(version: str, requests: int, agreement_docs: int, threads: int) -> dict[str, object]:
    """Part 6: each lever alone and all of them, against the code before them, taking turns per document."""
    from tuneloop.bases import DEFAULT_BASE, resolve_base
    from tuneloop.extraction import decoding_schema, source_text
    from tuneloop.registry.exports import ensure_gguf_lora
    from tuneloop.registry.versions import resolve_version
    from tuneloop.serve.backends import Adapter, GenerationParams, LlamaCppOptions, get_backend
    from tuneloop.task import load_task

    task = load_task(TASK)
    base = resolve_base(DEFAULT_BASE)
    info = resolve_version(version, verify=False)
    adapter = Adapter(info.id, info.adapter_path, ensure_gguf_lora(info))
    before = {"n_threads": threads, "prefix_cache_mb": 0, "forced_tokens": False}
    configs = {
        "before": before,
        "prefix_cache": {**before, "prefix_cache_mb": 256},
        "forced_tokens": {**before, "forced_tokens": True},
        "threads_auto": {**before, "n_threads": "auto"},
        # The defaults of `tuneloop serve`: forced tokens stay off (they change answers in near ties).
        "all": {"n_threads": "auto", "prefix_cache_mb": 256, "forced_tokens": False},
    }
    engines = {name: get_backend("llamacpp", base, LlamaCppOptions(**options)) for name, options in configs.items()}
    chats = demo_test_messages(max(requests, agreement_docs) + 1)
    timings: dict[str, list[float]] = {name: [] for name in engines}
    answers: dict[str, list[str]] = {name: [] for name in engines}
    try:
        for index, messages in enumerate(chats):
            params = GenerationParams(max_tokens=160, json_schema=decoding_schema(task, source_text(messages)))
            timed = 0 < index <= requests  # the first document warms every engine (adapter, head cache)
            for name, engine in engines.items():
                if not timed and index and name not in ("before", "all"):
                    continue  # past the timed documents, only the same-answers check goes on
                started = time.perf_counter()
                text = engine.generate(messages, params, adapter=adapter).text
                if timed:
                    timings[name].append((time.perf_counter() - started) * 1000)
                if index:
                    answers[name].append(text)
        threads_chosen = engines["all"].threads
    finally:
        for engine in engines.values():
            engine.close()
    results: dict[str, object] = {
        "levers_documents": requests,
        "levers_threads_chosen": {"decode": threads_chosen.decode, "prefill": threads_chosen.batch},
    }
    reference = percentile(timings["before"], 0.5)
    for name, values in timings.items():
        results[f"levers_{name}_p50_ms"] = round(percentile(values, 0.5), 1)
        results[f"levers_{name}_ratio"] = round(percentile(values, 0.5) / reference, 3)
    for name, texts in answers.items():
        if name != "before":
            same, total = identical_fields(answers["before"], texts)
            results[f"levers_{name}_fields_identical"] = f"{same}/{total} = {same / total:.2%} on {len(texts)} docs"
    return results


def identical_fields(before: list[str], after: list[str]) -> tuple[int, int]:
    """(fields with the same value, fields) over answers to the same documents, ``before`` setting the keys."""
    same = total = 0
    for old, new in zip(before, after, strict=False):
        old_value, new_value = json.loads(old), json.loads(new)
        for key in old_value:
            total += 1
            same += old_value[key] == new_value.get(key)
    return same, total


if __name__ == "__main__":
    main()

"""The bundled bases side by side on this machine (results in docs/serving.md, "The bundled bases", and
docs/benchmarks.md, "Model pool").

For each bundled base that is installed: resolving it (for gemma3-270m: assembling its chunks into a fresh
cache, then resolving it again once assembled), reading its GGUF metadata (ours ÷ gguf.GGUFReader),
llama.cpp's load time, prefill and free decode speed on the
demo task's prompt (64 tokens, the best of three runs: the machine is shared), and the demo extraction
request under the task's grammar. ``--convert`` also times the one-time transformers conversion (~1-2 min
per base on 2 cores). Everything is written under a temporary TUNELOOP_HOME.

    .venv/bin/python benchmarks/bundled_bases.py [--threads 1] [--convert]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

TASK = "liability-extraction"
TEXT = (
    "Payoff quote for loan ending 4821: $182,440.19 good through May 2. Escrow balance $2,310.55. "
    "Next payment due 2025-06-01 at 6.125%. Lakeview Loan Servicing."
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads (default 1, as serve on 2 cores)")
    parser.add_argument("--convert", action="store_true", help="also time the transformers conversion")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tuneloop-bases-bench-") as home:
        os.environ["TUNELOOP_HOME"] = home
        for base_id in bundled_ids():
            measure(base_id, args.threads, args.convert)


def bundled_ids() -> list[str]:
    from tuneloop.bases import list_bases

    return [row.id for row in list_bases(include_hf_cache=False) if row.kind == "bundled" and row.available]


def measure(base_id: str, threads: int, convert: bool) -> None:
    from tuneloop.bases import resolve_base, transformers_dir
    from tuneloop.generation import GenerationParams
    from tuneloop.serve.backends.llamacpp import LlamaCppBackend
    from tuneloop.serve.backends.options import LlamaCppOptions
    from tuneloop.task import load_task

    started = time.perf_counter()
    base = resolve_base(base_id)  # a chunked base is assembled here, into the fresh cache
    first = time.perf_counter() - started
    started = time.perf_counter()
    resolve_base(base_id)
    again = time.perf_counter() - started
    print(f"{base_id}: first resolve {first:.2f} s, resolve again {again * 1000:.2f} ms")
    metadata_header(base)

    task = load_task(TASK)
    messages = task.build_messages({"text": TEXT})
    started = time.perf_counter()
    backend = LlamaCppBackend(base, LlamaCppOptions(n_threads=threads))
    loaded = time.perf_counter() - started
    try:
        runs = []
        for _ in range(3):
            backend.llama.reset()  # prefill every time
            reply = backend.generate(messages, GenerationParams(max_tokens=64))
            decode = (reply.completion_tokens - 1) / ((reply.latency_ms - reply.ttft_ms) / 1000)
            runs.append((decode, reply.ttft_ms, reply.prompt_tokens))
        decode, prefill_ms, prompt_tokens = max(runs)
        backend.llama.reset()
        structured = backend.generate(messages, GenerationParams(max_tokens=200, json_schema=task.output_schema))
    finally:
        backend.close()
    print(
        f"  llama.cpp ({threads} thread{'s' if threads > 1 else ''}): load {loaded:.2f} s, prompt {prompt_tokens} "
        f"tokens, prefill {prefill_ms / 1000:.2f} s, decode {decode:.1f} tok/s; the extraction request under the "
        f"task grammar: {structured.completion_tokens} tokens in {structured.latency_ms / 1000:.2f} s "
        f"({structured.finish_reason})"
    )
    if convert:
        started = time.perf_counter()
        transformers_dir(base)
        print(f"  transformers conversion: {time.perf_counter() - started:.1f} s")


def metadata_header(base) -> None:  # type: ignore[no-untyped-def]
    """Reading a GGUF's keys (architecture, sizes, license): our header walk ÷ gguf.GGUFReader, same keys."""
    import gguf

    from tuneloop.bases.gguf_metadata import read_gguf_metadata

    started = time.perf_counter()
    ours = read_gguf_metadata(base.gguf_path)
    ours_s = time.perf_counter() - started
    started = time.perf_counter()
    reader = gguf.GGUFReader(str(base.gguf_path))
    theirs = {key: reader.get_field(key).contents() for key in ours}
    theirs_s = time.perf_counter() - started
    assert {key: ours[key] for key in theirs} == theirs, "the two readers disagree"
    print(
        f"  GGUF metadata ({len(ours)} keys, vocabulary arrays skipped): read_gguf_metadata {ours_s * 1000:.0f} ms, "
        f"gguf.GGUFReader {theirs_s:.1f} s ({theirs_s / ours_s:.0f}x)"
    )


if __name__ == "__main__":
    main()

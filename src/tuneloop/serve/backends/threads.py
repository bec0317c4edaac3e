"""How many threads llama.cpp should use here, chosen by measuring (``--threads auto``).

No constant is right everywhere: on a quiet 2-core machine two threads prefill ~1.8x and decode ~1.4x
faster than one, while next to busy neighbours two threads spin at llama.cpp's barriers and decode
collapses (measured 3-95 tok/s). So the backend times a short prefill and a few decode steps at each
candidate count on the loaded model and keeps the fastest count for each phase (prefill and decode are
separate llama.cpp settings). It costs about a second at load on a quiet machine and reflects the machine
as it is then.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

_PREFILL_TOKENS = 32
_DECODE_STEPS = 6
_CLEARLY_SLOWER = 1.5  # a count this much slower than the best in both phases ends the search upwards
_CLOSE = 1.3  # counts within this of the best are timed a second time before one is chosen


@dataclass(frozen=True)
class ThreadChoice:
    """The counts chosen for decoding (one token per step) and for prefill (batches), and what was timed:
    per candidate count, the median seconds of the prefill and of one decode step."""

    decode: int
    batch: int
    timings: dict[int, tuple[float, float]] = field(default_factory=dict)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def thread_candidates(cores: int) -> list[int]:
    """1, 2, 4, ... up to ``cores``, and ``cores`` itself."""
    counts, count = [], 1
    while count < cores:
        counts.append(count)
        count *= 2
    return [*counts, cores]


def choose_threads(llama: Any, candidates: list[int] | None = None) -> ThreadChoice:
    """Time prefill and decode on ``llama`` at each candidate thread count, set the fastest, return them.

    Counts are tried upwards; one clearly slower than the best in both phases ends the search (more
    threads only wait longer at the barriers), which keeps the probe short on a busy machine. The counts
    close to the best are timed again and the two timings averaged. The context is left empty."""
    import llama_cpp

    candidates = candidates or thread_candidates(usable_cores())
    # Any ordinary tokens do: speed does not depend on which (skip the specials at the start).
    tokens = [100 + index for index in range(_PREFILL_TOKENS)]
    timed: dict[int, list[tuple[float, float]]] = {}
    try:
        for count in candidates:
            timed[count] = [_time_at(llama, count, tokens)]
            prefill, step = timed[count][0]
            best_prefill = min(runs[0][0] for runs in timed.values())
            best_step = min(runs[0][1] for runs in timed.values())
            if prefill > _CLEARLY_SLOWER * best_prefill and step > _CLEARLY_SLOWER * best_step:
                break
        for count, runs in timed.items():
            prefill, step = runs[0]
            if prefill <= _CLOSE * best_prefill or step <= _CLOSE * best_step:
                runs.append(_time_at(llama, count, tokens))
    finally:
        llama.reset()
    timings = {
        count: (statistics.mean(run[0] for run in runs), statistics.mean(run[1] for run in runs))
        for count, runs in timed.items()
    }
    batch = min(timings, key=lambda count: timings[count][0])
    decode = min(timings, key=lambda count: timings[count][1])
    llama_cpp.llama_set_n_threads(llama.ctx, decode, batch)
    return ThreadChoice(decode=decode, batch=batch, timings=timings)


def _time_at(llama: Any, count: int, tokens: list[int]) -> tuple[float, float]:
    """(seconds of a prefill of ``tokens``, seconds of one decode step) at ``count`` threads."""
    import llama_cpp

    llama_cpp.llama_set_n_threads(llama.ctx, count, count)
    llama.reset()
    started = time.perf_counter()
    llama.eval(tokens)
    prefill = time.perf_counter() - started
    started = time.perf_counter()
    for step in range(_DECODE_STEPS):
        llama.eval([tokens[step]])
    return prefill, (time.perf_counter() - started) / _DECODE_STEPS

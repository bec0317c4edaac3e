"""Which synthetic-data generator writes a task's documents: the one dispatch point for `data synth` and the demo."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rich.console import Console

from tuneloop.demo import receipts, synth
from tuneloop.errors import TuneloopError
from tuneloop.progress import progress_bar

if TYPE_CHECKING:
    from tuneloop.task import Task

Synthesizer = Callable[..., list[dict[str, Any]]]  # (task, n, seed, test_fraction, *, on_progress) -> rows

SYNTHESIZERS: dict[str, Synthesizer] = {
    synth.SUPPORTED_TASK: synth.synthesize,
    receipts.SUPPORTED_TASK: receipts.synthesize,
}


def synthesizer_for(task_name: str) -> Synthesizer:
    """The generator of a packaged task; a clear error naming the tasks that have one otherwise."""
    if task_name not in SYNTHESIZERS:
        supported = " and ".join(f"the `{name}` task" for name in SYNTHESIZERS)
        raise TuneloopError(
            f"the synthetic generator only supports {supported}, not `{task_name}`",
            where="--task",
            hint="other tasks need real data: OpenAI chat JSONL or captured traffic",
        )
    return SYNTHESIZERS[task_name]


def synthesize(
    task: Task,
    n: int,
    seed: int,
    test_fraction: float = 0.2,
    *,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """``n`` rows for ``task`` from its generator (see ``synthesizer_for``)."""
    return synthesizer_for(task.name)(task, n, seed, test_fraction, on_progress=on_progress)


def synthesize_with_progress(
    task: Task, n: int, seed: int, test_fraction: float = 0.2, console: Console | None = None
) -> list[dict[str, Any]]:
    """``synthesize`` under a progress bar (count, rate, ETA)."""
    generate = synthesizer_for(task.name)  # an unknown task fails before the bar is drawn
    with progress_bar(console, unit="doc") as progress:
        bar = progress.add_task("synthesizing", total=n)

        def advance(done: int, total: int) -> None:
            if done % 50 == 0 or done == total:  # rich redraws are not free; a few per second is plenty
                progress.update(bar, completed=done)
            if done == total:  # the split that follows has no count to show; say what is running
                progress.update(bar, description="near-copy check and split")

        return generate(task, n, seed, test_fraction, on_progress=advance)

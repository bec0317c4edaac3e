"""Long work shows progress also where no live bar can be drawn (a log file, CI)."""

from __future__ import annotations

import io
import time

from rich.console import Console

from tuneloop.progress import progress_bar


def test_a_bar_on_a_non_terminal_console_prints_count_rate_and_eta_lines_as_it_goes() -> None:
    out = io.StringIO()
    progress = progress_bar(Console(file=out), unit="step", log_every=0.05)
    progress.start()
    task = progress.add_task("training", total=10)
    lines_while_running = []
    for _ in range(4):
        time.sleep(0.12)
        progress.update(task, advance=1)
        lines_while_running.append(out.getvalue().count("\n"))
    progress.stop()
    assert lines_while_running[-1] >= 2  # printed before the end, not only the final render
    logged = [line for line in out.getvalue().splitlines() if "/10" in line and "step/s" in line]
    assert logged and "eta" in logged[-1] and "…" not in logged[0]  # whole lines, not cut to 80 columns

"""One look for long work: a rich progress bar with count (or bytes), rate and ETA."""

from __future__ import annotations

import threading

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text


class RateColumn(ProgressColumn):
    """Items per second (or seconds per item when slow), as the work runs."""

    def __init__(self, unit: str = "it") -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if not speed and task.completed and task.elapsed:  # the sampled speed is gone once a task finishes
            speed = task.completed / task.elapsed
        if not speed:
            return Text(f"? {self.unit}/s", style="progress.data.speed")
        text = f"{speed:.1f} {self.unit}/s" if speed >= 1 else f"{1 / speed:.1f} s/{self.unit}"
        return Text(text, style="progress.data.speed")


class LoggedProgress(Progress):
    """A Progress that, when its console is not a terminal (a log file, CI), prints the bars every
    ``log_every`` seconds: rich draws a live bar only on terminals and would otherwise stay silent until
    the end of a run that may take an hour."""

    def __init__(self, *columns: ProgressColumn, log_every: float = 30.0, **kwargs) -> None:
        super().__init__(*columns, **kwargs)
        self.log_every = log_every
        self._stopped = threading.Event()
        self._logger: threading.Thread | None = None

    def start(self) -> None:
        super().start()
        if not self.console.is_terminal and self.log_every > 0 and self._logger is None:
            self._stopped.clear()
            self._logger = threading.Thread(target=self._log, name="progress-log", daemon=True)
            self._logger.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._logger is not None:
            self._logger.join(timeout=1)
            self._logger = None
        super().stop()

    def _log(self) -> None:
        while not self._stopped.wait(self.log_every):
            with self._lock:
                tasks = [task for task in self.tasks if task.visible and not task.finished]
            if tasks:
                # A log line is not cut to the 80 columns a non-terminal console assumes.
                options = self.console.options.update_width(max(self.console.width, 160))
                for line in self.console.render_lines(self.make_tasks_table(tasks), options, pad=False):
                    text = "".join(segment.text for segment in line).rstrip()
                    self.console.print(text, soft_wrap=True, markup=False, highlight=False)


def progress_bar(
    console: Console | None = None, unit: str = "it", transient: bool = False, log_every: float = 30.0
) -> Progress:
    return LoggedProgress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        RateColumn(unit),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        log_every=log_every,
        # rich estimates speed (and so the ETA) from the last 30 s by default: no ETA at all for steps
        # slower than that, as training steps on a CPU are.
        speed_estimate_period=600,
    )


def download_bar(console: Console | None = None, transient: bool = False, log_every: float = 30.0) -> Progress:
    """The same look for bytes: done / total in kB–GB, the transfer rate and the ETA."""
    return LoggedProgress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TaskProgressColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        log_every=log_every,
    )

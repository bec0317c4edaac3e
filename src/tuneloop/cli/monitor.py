"""CLI: monitor — drift between time windows, and shadow replays of live traffic to a candidate."""

from __future__ import annotations

from datetime import timedelta

import typer
from rich.console import Console
from rich.table import Table

from tuneloop.durations import parse_duration as parse_span
from tuneloop.errors import TuneloopError
from tuneloop.terminal import plain

app = typer.Typer(no_args_is_help=True)
console = Console(highlight=False, soft_wrap=True)


def parse_duration(text: str, where: str) -> timedelta:
    return timedelta(seconds=parse_span(text, where))


def _number(value: float | None, rate: bool) -> str:
    if value is None:
        return "-"
    return f"{value:.1%}" if rate else f"{value:,.4g}"


@app.command("drift")
def drift(
    model: str = typer.Option(..., "--model", help="The model whose traffic to compare, e.g. T@prod."),
    baseline: str = typer.Option("7d", "--baseline", help="Length of the baseline window before --window."),
    window: str = typer.Option("1d", "--window", help="Length of the latest window."),
    task: str | None = typer.Option(None, "--task", help="Task whose checks apply (default: the version's)."),
    alpha: float = typer.Option(0.01, "--alpha", help="Significance level, shared by all tests (Bonferroni)."),
    min_samples: int = typer.Option(20, "--min-samples", min=2, help="Values needed in each window to test."),
    fail_on_drift: bool = typer.Option(False, "--fail-on-drift", help="Exit 1 when a change is flagged (cron)."),
) -> None:
    """Compare check failures, corrections, field values, nulls and latency between two windows."""
    from tuneloop.monitor.drift import drift_report

    report = drift_report(
        model,
        baseline=parse_duration(baseline, "--baseline"),
        window=parse_duration(window, "--window"),
        task=task,
        alpha=alpha,
        min_samples=min_samples,
    )
    (b0, b1), (_, w1) = report.baseline_range, report.window_range
    table = Table(
        title=f"drift of {report.resolved} ({report.task})",
        caption=f"baseline {b0:%Y-%m-%d %H:%M} → {b1:%Y-%m-%d %H:%M}, window → {w1:%Y-%m-%d %H:%M} UTC; "
        f"flagged: p < {report.threshold:.2g} (alpha {report.alpha:g}, Bonferroni) and a change that matters",
    )
    for column in ("metric", "test", "baseline", "window", "n", "statistic", "p", "drift"):
        table.add_column(column, overflow="fold")
    for row in report.rows:
        rate = row.test == "z-test"
        table.add_row(
            plain(row.metric),  # may name a field value from the answers
            row.test,
            _number(row.baseline, rate),
            _number(row.window, rate),
            f"{row.n_baseline}/{row.n_window}",
            "-" if row.statistic is None else f"{row.statistic:.3f}",
            "-" if row.p_value is None else f"{row.p_value:.2g}",
            plain("FLAGGED", "bold red") if row.flagged else plain(row.note or "ok"),
        )
    console.print(table)
    flagged = report.flagged
    console.print(f"{len(flagged)} significant change(s)" if flagged else "no significant change")
    if flagged and fail_on_drift:
        raise typer.Exit(1)


@app.command("shadow")
def shadow(
    candidate: str = typer.Option(..., "--candidate", help="The version to try, e.g. T@5."),
    against: str = typer.Option(..., "--against", help="The version whose logged traffic to replay, e.g. T@prod."),
    sample: float = typer.Option(0.1, "--sample", help="Share of the logged calls to replay (stable by input)."),
    since: str | None = typer.Option(None, "--since", help="Only calls since: ISO date/time or 7d ago."),
    limit: int = typer.Option(500, "--limit", min=1, help="At most N calls."),
    backend: str = typer.Option("llamacpp", "--backend", help="Engine for the candidate: llamacpp or transformers."),
) -> None:
    """Replay a sample of live traffic to a candidate: agreement, and field error on reviewed items."""
    from tuneloop.monitor.shadow import shadow_replay
    from tuneloop.store.logs import parse_time

    # The engine is built by shadow_replay once the arguments and the versions have been checked.
    report = shadow_replay(
        candidate,
        against,
        sample=sample,
        since=parse_time(since, "--since") if since else None,
        limit=limit,
        backend=backend,
    )
    table = Table(title=f"shadow: {report.candidate} against {report.against} ({report.replayed} calls replayed)")
    table.add_column("measure")
    table.add_column("value")
    table.add_row("agreement (all fields)", _number(report.agreement, True))
    for name, share in report.field_agreement.items():
        table.add_row(plain(f"  {name}"), _number(share, True))
    table.add_row("reviewed calls", str(report.reviewed))
    table.add_row(f"field error of {report.candidate} on reviewed", _number(report.candidate_field_error, True))
    table.add_row(f"field error of {report.against} on reviewed", _number(report.production_field_error, True))
    if report.failed:
        table.add_row("replays that failed", str(report.failed))
    console.print(table)
    for error in report.errors[:5]:
        console.print(plain(error, "yellow"))  # a replay's error text: plain


@app.command("watch")
def watch(
    every: str = typer.Option("10s", "--every", help="Time between rounds (e.g. 10s, 1m)."),
    drift: list[str] = typer.Option([], "--drift", help="A model whose drift to watch, e.g. T@prod (repeatable)."),
    drift_every: str = typer.Option("5m", "--drift-every", help="Time between drift tests."),
    baseline: str = typer.Option("7d", "--baseline", help="Drift: the baseline window before --window."),
    window: str = typer.Option("1d", "--window", help="Drift: the latest window."),
    shadow_window: str = typer.Option("1h", "--shadow-window", help="Shadows: the window of comparisons summed."),
    port: int = typer.Option(9464, "--port", help="Serve the gauges at http://HOST:PORT/metrics (0: don't)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface for --port."),
    once: bool = typer.Option(False, "--once", help="One round, printed, then exit (cron, scripts)."),
) -> None:
    """Compute canary and shadow figures, trip failing canaries and test drift, on a clock (Prometheus gauges)."""
    import time

    from tuneloop.monitor.watch import Watcher
    from tuneloop.registry.rollouts import summarize_figures

    def span(text: str, where: str) -> float:
        return parse_span(text, where)

    watcher = Watcher(
        shadow_window_s=span(shadow_window, "--shadow-window"),
        drift_models=drift,
        drift_every_s=span(drift_every, "--drift-every"),
        drift_baseline=parse_duration(baseline, "--baseline"),
        drift_window=parse_duration(window, "--window"),
    )
    interval = span(every, "--every")
    if port and not once:
        from prometheus_client import start_http_server

        try:
            start_http_server(port, addr=host, registry=watcher.registry)
        except OSError as exc:
            raise TuneloopError(f"cannot listen on {host}:{port}: {exc}", where="--port", hint="pick another") from None
        console.print(f"gauges at http://{host}:{port}/metrics · a round every {every}")
    while True:
        found = watcher.run_once()
        for rollout in found.tripped:
            console.print(plain(f"canary {rollout.id} of {rollout.alias_id} switched off: {rollout.end_reason}", "red"))
        if once:
            for rollout_id, status in {**found.canaries, **found.shadows}.items():
                console.print(plain(f"rollout {rollout_id}: {summarize_figures(status.to_json())}"))
            for model, metrics in found.drift_flagged.items():
                console.print(plain(f"drift of {model}: {', '.join(metrics) or 'none flagged'}"))
        for error in found.errors:
            console.print(plain(error, "yellow"))
        if once:
            return
        time.sleep(interval)

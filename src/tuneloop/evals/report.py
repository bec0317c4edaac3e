"""Showing an eval report: rich tables in the terminal, the ``--json`` file, the ``--html`` page.

The HTML page is one self-contained file (Jinja2 template in ``templates/``, plots drawn by matplotlib's
Agg renderer and embedded as PNG): the price-performance scatter, the latency CDF and per-field error
bars, with the same tables as the terminal.
"""

from __future__ import annotations

import base64
import io
import json
import os
import uuid
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from tuneloop.evals.results import EvalReport, ModelResult
from tuneloop.evals.store import RunInfo
from tuneloop.evals.verdict import REQUIREMENT_MEASURES

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SMALL_SAMPLE = 30  # below this many examples, say that the intervals are wide


# --- numbers as words ----------------------------------------------------------------------------


def pct(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value * 100:.{digits}f}%"


def ms(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f} ms"


def usd(value: float | None) -> str:
    if value is None:
        return "—"
    if value == 0:
        return "$0"
    if value < 0.01:
        return f"${value:.4f}"
    if value < 100:
        return f"${value:.2f}" if value >= 1 else f"${value:.3f}"
    return f"${value:,.0f}"


def per_day(value: float | None) -> str:
    if value is None:
        return ""
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if value >= size:
            return f"{value / size:g}{suffix}/day"
    return f"{value:g}/day"


def number_ms(value: float | None) -> str:
    """Milliseconds without the unit, for table columns whose heading names it."""
    return "—" if value is None else f"{value:,.0f}"


def requirement_heading(requirement: str, ceiling: float) -> str:
    return {
        "max_error_rate": f"error ≤ {ceiling * 100:g}%",
        "max_p95_latency_ms": f"p95 ≤ {ceiling:g} ms",
        "max_cost_per_1k_requests_usd": f"≤ ${ceiling:g}/1k",
    }[requirement]


def mark(passed: bool | None) -> str:
    return {True: "✓", False: "✗", None: "?"}[passed]


def error_with_interval(model: ModelResult) -> str:
    if model.summary.field_error_ci95 is None:  # a text task: no fields to be wrong
        return "—"
    low, high = (bound * 100 for bound in model.summary.field_error_ci95)
    return f"{pct(model.summary.field_error_rate)} ({low:.{1 if low < 10 else 0}f}–{high:.{1 if high < 10 else 0}f})"


def judged_requirements(report: EvalReport) -> list[tuple[str, float]]:
    ceilings = [(name, getattr(report.requirements, name)) for name in REQUIREMENT_MEASURES]
    in_scope = [(name, ceiling) for name, ceiling in ceilings if ceiling is not None]
    if report.mode == "score":
        in_scope = [(name, ceiling) for name, ceiling in in_scope if name == "max_error_rate"]
    return in_scope


# --- terminal ------------------------------------------------------------------------------------


def report_tables(report: EvalReport) -> Group:
    """The verdict table (the seed's table), quality, speed, error per field (JSON tasks), the judge's
    verdicts (text tasks judged) with its agreement with human labels."""
    tables: list[Any] = []
    if report.models:
        tables += [verdict_table(report), quality_table(report)]
        if report.mode == "run":
            tables.append(speed_table(report))
        if report.fields:  # a text task has none
            tables.append(field_table(report))
    if report.judge is not None:
        if report.judged:
            tables.append(judge_table(report))
            calls = sum(summary.judge_calls for summary in report.judged)
            cached = sum(summary.verdicts_cached for summary in report.judged)
            spent = [summary.judge_spent_usd for summary in report.judged if summary.judge_spent_usd is not None]
            cost = f", costing {usd(sum(spent))}" if spent else ""
            tables.append(
                Text(f"judge calls in this run: {calls}{cost}; verdicts from the cache: {cached}", style="dim")
            )
        tables.append(agreement_text(report))
    return Group(*tables, notes(report))


def win_rate_with_interval(rate: float | None, interval: tuple[float, float] | None) -> str:
    if rate is None or interval is None:
        return "—"
    low, high = (bound * 100 for bound in interval)
    return f"{pct(rate)} ({low:.0f}–{high:.0f})"


def judge_table(report: EvalReport) -> Table:
    """Each candidate against the baseline: wins, ties, losses over both orders, the win rate and its interval."""
    baseline = report.judged[0].baseline
    table = Table(
        title=f"{report.task}: judged by {report.judge} against {baseline}, each pair in both orders",
        title_justify="left",
        caption="a win or loss counts only when both orders agree, else a tie (inconsistent); "
        "win rate = (wins + ½ ties) / pairs decided, 95% Wilson interval",
        caption_justify="left",
        box=box.SIMPLE_HEAD,
    )
    _model_column(table, report)
    for heading in ("pairs", "wins", "ties", "losses", "win rate (95% CI)", "inconsistent", "unparseable", "failed"):
        table.add_column(heading, justify="right")
    for summary in report.judged:
        inconsistent = f"{summary.inconsistent} ({pct(summary.inconsistent_share, 0)})" if summary.judged else "0"
        table.add_row(
            Text(summary.candidate),
            str(summary.pairs),
            str(summary.wins),
            str(summary.ties),
            str(summary.losses),
            win_rate_with_interval(summary.win_rate, summary.win_rate_ci95),
            inconsistent,
            str(summary.unparseable),
            str(summary.failed),
        )
    return table


def agreement_text(report: EvalReport) -> Text:
    """The judge's agreement with people, beside its verdicts: how far to trust them."""
    agreement = report.agreement
    if agreement is None:
        return Text(
            f"judge {report.judge}: its agreement with human labels has not been measured on this task "
            "(--judge-labels FILE, or `tuneloop eval judge-agreement`), so how far to trust its verdicts is unknown"
        )
    interval = agreement.rate_ci95
    rate = win_rate_with_interval(agreement.rate, interval)
    kappa = f"{agreement.kappa:.2f}" if agreement.kappa is not None else "undefined (one label only)"
    left_out = agreement.unparseable + agreement.failed + agreement.pending
    return Text(
        f"judge {report.judge} agrees with human labels on {rate} of {agreement.judged} labelled pairs "
        f"(95% Wilson interval), Cohen's kappa {kappa}; {agreement.inconsistent} inconsistent across orders"
        + (f", {left_out} without two verdicts" if left_out else "")
        + f" ({Path(agreement.labels).name}"
        + (f", measured in run {agreement.measured_in})" if agreement.measured_in else ")")
    )


# Model names, field names and outputs are the user's text: cells get them as Text, never as strings,
# which rich would read as markup ("model [transformers]" would lose its "[transformers]").


def _model_column(table: Table, report: EvalReport) -> None:
    # Folds rather than crops when the terminal is narrow: "base [transformers]" must never be cut to
    # "base", where it would read as another row's model.
    table.add_column("model", overflow="fold")


def verdict_table(report: EvalReport) -> Table:
    """Model by model: error, p95 latency and cost, each marked ✓/✗ against its requirement (? when it
    was not measured), and whether the model meets them all."""
    partial = "" if report.complete else f", {report.status}: not every model answered all"
    requirements = judged_requirements(report)
    caption = "requirements: " + ", ".join(requirement_heading(name, ceiling) for name, ceiling in requirements)
    if report.mode == "run" and report.requests_per_day:
        caption += f"; $/month at {per_day(report.requests_per_day)}, 30 days"
    table = Table(
        title=f"{report.task}: field error, latency, cost on {report.n} examples (run {report.run_id}{partial})",
        title_justify="left",
        caption=caption if requirements else "the task states no requirements",
        caption_justify="left",
        box=box.SIMPLE_HEAD,
    )
    _model_column(table, report)
    licensed = any(model.license for model in report.models)
    if licensed:
        table.add_column("base license", overflow="fold")
    table.add_column("error (95% CI)", justify="right", no_wrap=True)
    if report.mode == "run":
        table.add_column("p95 ms", justify="right")
        table.add_column("$/1k req", justify="right")
        if report.requests_per_day:
            table.add_column("$/month", justify="right")
    table.add_column("meets all", justify="center", no_wrap=True)
    judged = dict(requirements)
    for model in report.models:

        def judged_cell(requirement: str, text: str, model: ModelResult = model) -> Text:
            if requirement not in judged:
                return Text(text)
            passed = model.verdict.checks.get(requirement)
            return Text(f"{text} {mark(passed)}", style={True: "green", False: "red", None: "yellow"}[passed])

        row: list[str | Text] = [Text(model.name)]
        if licensed:
            row.append(Text(model.license or "—"))
        row.append(judged_cell("max_error_rate", error_with_interval(model)))
        if report.mode == "run":
            row.append(judged_cell("max_p95_latency_ms", number_ms(model.latency.p95_ms if model.latency else None)))
            row.append(judged_cell("max_cost_per_1k_requests_usd", usd(model.cost_per_1k_usd)))
            if report.requests_per_day:
                row.append(usd(model.cost_per_month_usd))
        meets = model.verdict.meets_all
        row.append(Text("yes" if meets else "no", style="bold green" if meets else "red"))
        table.add_row(*row)
    return table


def quality_table(report: EvalReport) -> Table:
    table = Table(title="quality", title_justify="left", box=box.SIMPLE_HEAD)
    _model_column(table, report)
    for heading in ("exact match", "invalid", "halluc.", "invented", "misses", "checks failed"):
        table.add_column(heading, justify="right")
    for model in report.models:
        summary = model.summary
        table.add_row(
            Text(model.name),
            pct(summary.exact_match_rate, 0) if report.fields else "—",
            pct(summary.invalid_rate, 0),
            str(summary.hallucinations),
            str(summary.invented),
            str(summary.misses),
            pct(summary.check_failure_rate, 0),
        )
    return table


def speed_table(report: EvalReport) -> Table:
    table = Table(title="speed (ms per request)", title_justify="left", box=box.SIMPLE_HEAD)
    _model_column(table, report)
    for heading in ("p50", "p99", "TTFT p50", "TTFT p95", "out tok/s", "cached", "failed"):
        table.add_column(heading, justify="right")
    for model in report.models:
        latency = model.latency
        speed = latency.output_tokens_per_s if latency else None
        table.add_row(
            Text(model.name),
            number_ms(latency.p50_ms if latency else None),
            number_ms(latency.p99_ms if latency else None),
            number_ms(latency.ttft_p50_ms if latency else None),
            number_ms(latency.ttft_p95_ms if latency else None),
            "—" if speed is None else f"{speed:.0f}",
            f"{model.cached}/{model.results}",
            str(model.failed_requests),
        )
    return table


def field_table(report: EvalReport) -> Table:
    table = Table(title="error rate per field", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("field")
    for model in report.models:
        table.add_column(Text(model.name), justify="right", overflow="fold", max_width=24)
    for name in report.fields:
        table.add_row(Text(name), *(pct(model.summary.per_field.get(name), 0) for model in report.models))
    return table


def notes(report: EvalReport) -> Text:
    lines = []
    if report.mode == "run":
        for model in report.models:
            lines.append(f"cost of {model.name}: {model.cost_basis}")
        spent = [model.spent_usd for model in report.models if model.spent_usd]
        if spent:
            lines.append(f"this run's new requests cost {usd(sum(spent))} (cached answers cost nothing)")
    elif report.mode == "score":
        lines.append("saved predictions: no latency or cost measured, so only the error rate is judged")
    if report.models and not report.fields and report.judge is None:
        lines.append("a text task: no fields to score; its answers are weighed with --judge MODEL --baseline MODEL")
    if report.n < SMALL_SAMPLE:
        lines.append(f"with {report.n} examples the intervals are wide; evaluate on more for a firm verdict")
    return Text("\n".join(lines), style="dim")


def print_report(report: EvalReport, console: Console) -> None:
    console.print(report_tables(report))


# --- files ---------------------------------------------------------------------------------------


def write_json(report: EvalReport, path: Path) -> None:
    _write_atomic(path, json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")


def write_html(report: EvalReport, path: Path) -> None:
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.FunctionLoader(_template_source), autoescape=True, undefined=jinja2.StrictUndefined
    )
    environment.filters.update(pct=pct, ms=ms, usd=usd)
    template = environment.get_template("report.html.j2")
    plots = render_plots(report)
    html = template.render(
        report=report,
        requirements=[
            (name, ceiling, requirement_heading(name, ceiling)) for name, ceiling in judged_requirements(report)
        ],
        per_day=per_day(report.requests_per_day),
        error_with_interval=error_with_interval,
        win_rate_with_interval=win_rate_with_interval,
        agreement_text=lambda report: agreement_text(report).plain,
        mark=mark,
        plots={name: base64.b64encode(png).decode("ascii") for name, png in plots.items()},
        small_sample=report.n < SMALL_SAMPLE,
        licensed=any(model.license for model in report.models),
    )
    _write_atomic(path, html)


def _template_source(name: str) -> str:
    return (resources.files("tuneloop") / "evals" / "templates" / name).read_text(encoding="utf-8")


def _write_atomic(path: Path, text: str) -> None:
    # A temp file beside the target, then a rename: a report is never half-written. Opened with "x"
    # rather than mkstemp so the file gets the umask's permissions (mkstemp's are 0600).
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("x", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --- plots ---------------------------------------------------------------------------------------


def render_plots(report: EvalReport) -> dict[str, bytes]:
    """PNG images by name: ``scatter`` and ``latency`` (when measured), ``fields`` (a JSON task), ``wins``
    (a judged text task)."""
    plots: dict[str, bytes] = {}
    if report.fields and any(model.cost_per_1k_usd is not None for model in report.models):
        plots["scatter"] = _png(price_performance_scatter(report))
    if any(model.latencies_ms for model in report.models):
        plots["latency"] = _png(latency_cdf(report))
    if report.fields:  # a text task has none
        plots["fields"] = _png(field_error_bars(report))
    if any(summary.decided for summary in report.judged):
        plots["wins"] = _png(win_rate_bars(report))
    return plots


def _figure(width: float = 7.5, height: float = 4.5) -> Figure:
    # The object-oriented API with no pyplot: no GUI backend, safe in servers and threads.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _colors(count: int) -> list[str]:
    from matplotlib import colormaps

    palette = colormaps["tab10"]
    return [palette(index % 10) for index in range(count)]


def _legend_below(figure: Figure, axes: Any) -> None:
    # Outside the axes: with error rates near 100 % or long latency tails no corner inside stays free.
    handles, labels = axes.get_legend_handles_labels()
    if handles:
        figure.legend(
            handles, labels, loc="outside lower center", ncols=min(3, len(handles)), fontsize=8, frameon=False
        )


def price_performance_scatter(report: EvalReport) -> Figure:
    """Error against cost per 1k requests, one point per model with its 95 % interval; the corner
    that meets both requirements is shaded."""
    figure = _figure()
    axes = figure.add_subplot()
    colored = zip(report.models, _colors(len(report.models)), strict=True)
    costed = [
        (model, color)
        for model, color in colored
        if model.cost_per_1k_usd is not None and model.summary.field_error_ci95 is not None
    ]
    max_error = report.requirements.max_error_rate
    max_cost = report.requirements.max_cost_per_1k_requests_usd
    costs = [model.cost_per_1k_usd or 0.0 for model, _ in costed]
    positive = [cost for cost in costs if cost > 0] + ([max_cost] if max_cost else [])
    log_x = bool(positive) and max(positive) / min(positive) > 20
    floor = min(positive) / 3 if positive else 0.0  # where a free model sits on a log axis
    for (model, color), cost in zip(costed, costs, strict=True):
        rate = (model.summary.field_error_rate or 0.0) * 100
        low, high = (bound * 100 for bound in model.summary.field_error_ci95 or (0.0, 0.0))
        x = cost if not log_x or cost > 0 else floor
        axes.errorbar(
            x, rate, yerr=[[rate - low], [high - rate]], fmt="o", color=color, capsize=4, markersize=7, label=model.name
        )
    if log_x:
        axes.set_xscale("log")
        axes.margins(x=0.15)
    else:
        right = max([*costs, max_cost or 0.0]) * 1.15 or 1.0
        axes.set_xlim(0, right)  # a linear cost axis starts at free
    if max_error is not None:
        axes.axhline(max_error * 100, color="#2a7", linestyle="--", linewidth=1)
    if max_cost is not None:
        axes.axvline(max_cost, color="#2a7", linestyle="--", linewidth=1)
    if max_error is not None and max_cost is not None:
        left = axes.get_xlim()[0]
        axes.fill_between(
            [left, max_cost],
            0,
            max_error * 100,
            color="#2a7",
            alpha=0.12,
            label="meets the error and cost requirements",
        )
        axes.set_xlim(left=left)
    axes.set_ylim(0, 105)
    axes.set_xlabel("cost per 1k requests (USD" + (", log scale)" if log_x else ")"))
    axes.set_ylabel("field error rate (%), 95% CI")
    axes.set_title("price and performance")
    axes.grid(alpha=0.3)
    _legend_below(figure, axes)
    return figure


def latency_cdf(report: EvalReport) -> Figure:
    figure = _figure()
    axes = figure.add_subplot()
    for model, color in zip(report.models, _colors(len(report.models)), strict=True):
        latencies = sorted(model.latencies_ms)
        if not latencies:
            continue
        # The empirical CDF: 0 left of the fastest request, a step up at each one, 1 at the slowest.
        shares = [0.0] + [(index + 1) / len(latencies) for index in range(len(latencies))]
        axes.step([latencies[0], *latencies], shares, where="post", color=color, label=model.name)
    if report.requirements.max_p95_latency_ms is not None:
        ceiling = report.requirements.max_p95_latency_ms
        axes.axvline(ceiling, color="#c33", linestyle="--", linewidth=1, label=f"max p95 ({ceiling:g} ms)")
    axes.axhline(0.95, color="grey", linestyle=":", linewidth=1, label="95% of requests")
    axes.set_xscale("log")
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("latency per request (ms, log scale)")
    axes.set_ylabel("share of requests at or under")
    axes.set_title("latency CDF")
    axes.grid(alpha=0.3, which="both")
    _legend_below(figure, axes)
    return figure


def field_error_bars(report: EvalReport) -> Figure:
    figure = _figure(width=max(7.5, 1.3 * len(report.fields) + 2))
    axes = figure.add_subplot()
    width = 0.8 / max(1, len(report.models))
    positions = list(range(len(report.fields)))
    for index, (model, color) in enumerate(zip(report.models, _colors(len(report.models)), strict=True)):
        offsets = [position - 0.4 + width * (index + 0.5) for position in positions]
        rates = [model.summary.per_field.get(name, 0.0) * 100 for name in report.fields]
        axes.bar(offsets, rates, width=width, color=color, label=model.name)
    if report.requirements.max_error_rate is not None:
        ceiling = report.requirements.max_error_rate * 100
        axes.axhline(
            ceiling, color="#c33", linestyle="--", linewidth=1, label=f"max error rate, all fields ({ceiling:g}%)"
        )
    axes.set_xticks(positions, report.fields, rotation=20, ha="right")
    axes.set_ylim(0, 105)
    axes.set_ylabel("error rate (%)")
    axes.set_title("error rate per field")
    axes.grid(alpha=0.3, axis="y")
    _legend_below(figure, axes)
    return figure


def win_rate_bars(report: EvalReport) -> Figure:
    """Each judged candidate's wins, ties and losses against the baseline as shares of the pairs decided, with
    the win rate and its Wilson interval drawn over them and the 50 % line (as good as the baseline)."""
    judged = [summary for summary in report.judged if summary.decided]
    figure = _figure(height=max(2.5, 0.7 * len(judged) + 1.8))
    axes = figure.add_subplot()
    rows = list(range(len(judged)))
    left = [0.0] * len(judged)
    for part, color in (("wins", "#2a9d55"), ("ties", "#b8b8b8"), ("losses", "#c8553d")):
        shares = [getattr(summary, part) / summary.decided * 100 for summary in judged]
        axes.barh(rows, shares, left=left, color=color, height=0.5, label=part)
        left = [start + share for start, share in zip(left, shares, strict=True)]
    for row, summary in zip(rows, judged, strict=True):
        low, high = summary.win_rate_ci95 or (0.0, 0.0)
        rate = (summary.win_rate or 0.0) * 100
        axes.errorbar(
            rate, row, xerr=[[rate - low * 100], [high * 100 - rate]], fmt="o", color="black", capsize=4, markersize=4
        )
    axes.axvline(50, color="#333", linestyle="--", linewidth=1, label="as good as the baseline (50 %)")
    axes.set_yticks(rows, [summary.candidate for summary in judged])
    axes.set_xlim(0, 100)
    axes.set_xlabel("share of pairs decided (%); dot: win rate with its 95 % Wilson interval")
    axes.set_title(f"judged by {report.judge}, both orders\nagainst {judged[0].baseline}", fontsize=9)
    axes.grid(alpha=0.3, axis="x")
    _legend_below(figure, axes)
    return figure


def run_rows(runs: Iterable[RunInfo]) -> list[list[str]]:
    """Rows of ``eval list``: id, when, task, data, models, status, best error."""
    rows = []
    for run in runs:
        models = ", ".join(model["label"] for model in run.config.get("models", []))
        best = "–"
        if run.summary:
            rates = [model["field_error_rate"] for model in run.summary.get("models", [])]
            rates = [rate for rate in rates if rate is not None]  # a text task's runs have no field error
            wins = [pair["win_rate"] for pair in (run.summary.get("judge") or {}).get("pairs", [])]
            wins = [rate for rate in wins if rate is not None]
            if rates:
                best = f"{pct(min(rates))} error"
            elif wins:  # a judged text run: the best candidate's win rate against the baseline
                best = f"{pct(max(wins), 0)} wins"
        rows.append(
            [
                str(run.id),
                run.created_at.strftime("%m-%d %H:%M"),
                run.task,
                _short_data(run.data_ref),
                str(run.config.get("n", "")),
                models,
                run.status,
                best,
            ]
        )
    return rows


def _short_data(data_ref: str) -> str:
    return data_ref if data_ref.startswith("dataset:") else Path(data_ref).name

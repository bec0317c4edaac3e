"""CLI: task specs. Parse and print; the spec itself lives in tuneloop.task."""

from __future__ import annotations

import json

import typer
import yaml
from rich.console import Console
from rich.table import Table

from tuneloop.task import FieldCheck, RuleCheck, load_task, packaged_task_names

app = typer.Typer(no_args_is_help=True)
console = Console()


@app.command("validate")
def validate(path: str = typer.Argument(..., help="A task YAML file (or the name of a known task).")) -> None:
    """Check a task spec; problems are reported as file:line: key: message."""
    task = load_task(path)
    answers = "free text judged by its rubric" if task.is_text else f"{len(task.field_names)} fields"
    console.print(f"[green]ok[/] {task.name}: {answers}, {len(task.checks)} checks")


@app.command("show")
def show(
    ref: str = typer.Argument(..., help="A task name or a path to a task YAML file."),
    as_json: bool = typer.Option(False, "--json", help="Print the validated spec as JSON."),
) -> None:
    """Show a task: its fields with their comparators, checks and requirements."""
    task = load_task(ref)
    if as_json:
        typer.echo(json.dumps(task.model_dump(mode="json"), indent=2))
        return
    console.print(f"[bold]{task.name}[/]  {task.description}")
    console.print(f"instructions: {task.instructions}")
    console.print(f"input template: {task.input!r}")
    if task.is_text:  # no fields: the answer is free text, weighed by a judge against the rubric
        console.print("output: free text (`tuneloop eval run --judge MODEL --baseline MODEL` weighs it)")
        console.print(f"rubric: {task.rubric}", markup=False)
    fields = Table("field", "type", "compare", "details", "copied from the input", title="fields")
    for name in task.field_names:
        spec, prop = task.field_spec(name), task.schema["properties"][name]
        details = {
            "number": f"tolerance {spec.tolerance:g}"
            + (f", relative {spec.relative_tolerance:g}" if spec.relative_tolerance else ""),
            "fuzzy": f"threshold {spec.threshold:g}",
            "enum": ", ".join(spec.values or prop.get("enum", [])),
        }.get(spec.compare, "")
        if spec.formats or spec.canonical:
            details = ", ".join(filter(None, [details, "formats " + " | ".join(spec.formats or ["default"])]))
            details += f" → {spec.canonical}" if spec.canonical else ""
        copied = spec.extract or ""
        fields.add_row(name, json.dumps(prop.get("type")), spec.compare, details, copied)
    if not task.is_text:
        console.print(fields)
    if any(task.field_spec(name).extract for name in task.field_names):
        console.print(f"extraction: whitespace {task.extraction.whitespace}, case {task.extraction.case}")
    rules = Table("check", title="checks")
    for check in task.checks:
        if isinstance(check, FieldCheck | RuleCheck):
            rules.add_row(yaml.safe_dump(check.model_dump(exclude_defaults=True), default_flow_style=True).strip())
        else:
            rules.add_row(f"min_confidence: {check.min_confidence}")
    console.print(rules)
    console.print(f"on_check_failure: {task.on_check_failure}")
    console.print(f"requirements: {task.requirements.model_dump(exclude_none=True)}")
    console.print(f"licenses: {', '.join(task.licenses) if task.licenses else 'any (no licenses: set)'}")


@app.command("list")
def list_tasks() -> None:
    """The tasks shipped with tuneloop (any YAML file of yours works too)."""
    for name in packaged_task_names():
        typer.echo(name)

"""CLI: bases — list, show and prepare base models."""

from __future__ import annotations

import time

import typer
from rich.console import Console
from rich.table import Table

from tuneloop.bases import (
    base_weights_hash,
    conversion_dir,
    conversion_info,
    describe_base,
    list_bases,
    resolve_base,
    transformers_dir,
)

app = typer.Typer(no_args_is_help=True)
console = Console()


@app.command("list")
def list_command(
    hf_cache: bool = typer.Option(True, "--hf-cache/--no-hf-cache", help="Also list causal LMs in the HF cache."),
) -> None:
    """The bundled bases and the causal LMs already in the local Hugging Face cache."""
    table = Table(title="Base models", title_justify="left")
    for column in ("id", "kind", "size", "converted", "path / problem"):
        table.add_column(column, overflow="fold")
    for info in list_bases(include_hf_cache=hf_cache):
        if info.available:
            converted = "yes" if info.conversion_cached else "no (tuneloop bases prepare)"
            table.add_row(info.id, info.kind, _size(info.size_bytes), converted, str(info.path))
        else:
            table.add_row(info.id, info.kind, "-", "-", f"[red]not available:[/] {info.problem}")
    console.print(table)
    console.print("Also usable: hf:<org>/<name> once downloaded, or the path of an HF model folder or .gguf file.")


@app.command("show")
def show_command(name: str = typer.Argument(..., help="Base id, hf:<org>/<name>, or a path.")) -> None:
    """Where a base's files are, its weights hash and its cached transformers conversion."""
    base = resolve_base(name)
    info = describe_base(base)
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("id", base.id)
    table.add_row("kind", f"{base.kind} ({base.format})")
    table.add_row("description", base.description)
    table.add_row("license", base.license)
    table.add_row("path", str(base.path))
    table.add_row("size", _size(info.size_bytes))
    table.add_row("weights sha256", base_weights_hash(base))
    if base.gguf_path is None:
        table.add_row("transformers", f"{base.hf_dir} (HF format, no conversion needed)")
    elif (converted := conversion_info(base)) is not None:
        table.add_row(
            "transformers",
            f"{conversion_dir(base)} (converted {converted.get('converted_at', '?')} "
            f"in {converted.get('seconds', '?')} s, transformers {converted.get('transformers', '?')})",
        )
    else:
        table.add_row("transformers", "not converted yet: run `tuneloop bases prepare " + name + "`")
    console.print(table)


@app.command("prepare")
def prepare_command(name: str = typer.Argument(..., help="Base id, hf:<org>/<name>, or a path.")) -> None:
    """Convert a GGUF base to transformers format now (done once; training and the reference backend use it)."""
    base = resolve_base(name)
    if base.gguf_path is None:
        console.print(f"{base.id} is already in HF format at {base.hf_dir}; nothing to prepare.")
        return
    if conversion_info(base) is not None:
        console.print(f"[green]✓[/] {base.id} is already converted: {conversion_dir(base)}")
        return
    started = time.perf_counter()
    with console.status(f"Converting {base.id} to transformers format…") as status:
        folder = transformers_dir(base, progress=lambda message: status.update(f"{base.id}: {message}…"))
    elapsed = time.perf_counter() - started
    console.print(f"[green]✓[/] converted {base.id} in {elapsed:.1f} s → {folder}")


def _size(size_bytes: int | None) -> str:
    if size_bytes is None:
        return "-"
    size = float(size_bytes)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size_bytes} B"

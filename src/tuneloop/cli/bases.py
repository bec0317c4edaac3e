"""CLI: bases — list, show, pull and prepare base models."""

from __future__ import annotations

import os
import signal
import time

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from tuneloop.bases import (
    Base,
    base_weights_hash,
    conversion_dir,
    conversion_info,
    describe_base,
    list_bases,
    resolve_base,
    transformers_dir,
)
from tuneloop.bases.resolve import HF_PREFIX
from tuneloop.licenses import License
from tuneloop.terminal import plain, printable

app = typer.Typer(no_args_is_help=True)
console = Console()


@app.command("list")
def list_command(
    hf_cache: bool = typer.Option(True, "--hf-cache/--no-hf-cache", help="Also list causal LMs in the HF cache."),
) -> None:
    """The bundled bases and the causal LMs already in the local Hugging Face cache."""
    table = Table(title="Base models", title_justify="left")
    for column in ("id", "kind", "license", "size", "converted", "path / problem"):
        table.add_column(column, overflow="fold")
    for info in list_bases(include_hf_cache=hf_cache):
        license_cell = Text(info.license or "unknown")
        if info.available:
            converted = "yes" if info.conversion_cached else "no (tuneloop bases prepare)"
            where = Text(str(info.path)) if info.path else Text("-")
            if info.note:
                where.append(f" ({info.note})", style="dim")
            table.add_row(Text(info.id), info.kind, license_cell, _size(info.size_bytes), converted, where)
        else:
            problem = Text("not available: ", style="red")
            problem.append(info.problem)
            table.add_row(Text(info.id), info.kind, license_cell, "-", "-", problem)
    console.print(table)
    console.print(
        Text(
            "Also usable: hf:<org>/<name>[@revision] once pulled (tuneloop bases pull), or the path of an HF model "
            "folder or .gguf file."
        )
    )


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
    table.add_row("license", _license(base))
    if base.kind == "hf":
        table.add_row("commit", _commit(base))
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


@app.command("pull")
def pull_command(
    name: str = typer.Argument(..., help="hf:<org>/<name>, or hf:<org>/<name>@<branch, tag or commit>."),
    gguf: str | None = typer.Option(None, "--gguf", help="Pull this GGUF file of the repo (its name or path)."),
    include: list[str] = typer.Option(
        [], "--include", help="Also pull repo files matching this pattern (fnmatch; repeatable)."
    ),
    endpoint: str | None = typer.Option(
        None, "--endpoint", help="The Hub's URL (default: $HF_ENDPOINT, else https://huggingface.co)."
    ),
) -> None:
    """Download a base from the Hugging Face Hub into the HF cache, resumable, verified, its commit recorded."""
    from tuneloop.bases.pull import pull_base, remove_partial_downloads
    from tuneloop.bases.resolve import split_hf_name
    from tuneloop.progress import download_bar

    started = time.time()
    progress = download_bar(console, transient=True)

    def interrupted(_signum: int, _frame: object) -> None:
        # huggingface_hub's download threads finish the file they are on before a KeyboardInterrupt gets
        # through (a multi-GB wait): stop now, removing this run's partial files; completed files are kept.
        progress.stop()
        remove_partial_downloads(split_hf_name(name)[0], newer_than=started)
        console.print("[yellow]interrupted:[/] the files completed are kept; run the same command to fetch the rest")
        console.file.flush()
        os._exit(130)

    previous = signal.signal(signal.SIGINT, interrupted)
    try:
        with progress:
            result = pull_base(
                name,
                gguf=gguf,
                include=include,
                endpoint=endpoint,
                progress=progress,
                say=lambda message: progress.console.print(Text(message, style="dim")),
            )
    finally:
        signal.signal(signal.SIGINT, previous)
    fetched = (
        "nothing to download: already pulled"
        if not result.downloaded and not result.refetched
        else f"downloaded {len(result.downloaded) + len(result.refetched)} files ({_size(result.bytes_downloaded)})"
    )
    if result.refetched:
        fetched += f"; fetched again (did not match the Hub): {', '.join(result.refetched)}"
    line = Text("✓ ", style="green")
    line.append(
        f"{printable(result.base_id)} at commit {result.commit} ({result.format}): {fetched}; {len(result.files)} "
        f"files verified against the Hub's sizes and sha256 in {result.seconds:.1f} s"
    )
    console.print(line)
    license_id = "" if result.license == result.license_id else f" ({result.license_id})"
    console.print(plain(f"  license: {result.license}{license_id}"))
    console.print(plain(f"  files:   {result.snapshot}"))
    console.print(plain(f"  record:  {result.record_path}"))
    pinned = f"{HF_PREFIX}{result.repo_id}@{result.commit[:12]}"
    console.print(plain(f"  use it as {result.base_id}, or pinned to this commit as {pinned}"))


def _license(base: Base) -> Text:
    return plain(License(text=base.license, id=base.license_id, source=base.license_source).describe())


def _commit(base: Base) -> str:
    from tuneloop.bases.pull import read_pull_record
    from tuneloop.bases.resolve import split_hf_name

    if base.commit is None:
        return "-"
    record = read_pull_record(split_hf_name(base.id)[0], base.commit)
    if record is None:
        return f"{base.commit} (not pulled by tuneloop here: its files were not verified)"
    return (
        f"{base.commit} (pulled {record.get('pulled_at', '?')} as {record.get('revision', '?')} from "
        f"{record.get('endpoint', '?')}; {len(record.get('files', []))} files verified)"
    )

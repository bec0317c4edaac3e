"""Datasets: their entries, where each answer came from (provenance, lineage), and the splits."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from tuneloop.data.datasets import all_entries, best_entry_per_input, get_dataset, summarize_dataset
from tuneloop.errors import TuneloopError
from tuneloop.store import PROVENANCES, SPLITS, Dataset, DatasetEntry, session_scope
from tuneloop.ui import web

router = APIRouter()
PAGE_SIZE = 50


@router.get("/datasets", response_class=HTMLResponse)
def list_page(request: Request) -> HTMLResponse:
    with session_scope() as session:
        counts = dict(
            session.execute(sa.select(DatasetEntry.dataset_id, sa.func.count()).group_by(DatasetEntry.dataset_id)).all()
        )
        datasets = [
            {"row": dataset, "entries": counts.get(dataset.id, 0)}
            for dataset in session.scalars(sa.select(Dataset).order_by(Dataset.name))
        ]
    return web.render(request, "datasets.html", datasets=datasets)


@router.get("/datasets/{name}", response_class=HTMLResponse)
def show_page(
    request: Request, name: str, split: str = "", provenance: str = "", before: int | None = None
) -> HTMLResponse:
    try:
        summary = summarize_dataset(name)
    except TuneloopError as exc:
        raise web.NotFound(str(exc)) from None
    split = split if split in SPLITS else ""
    provenance = provenance if provenance in PROVENANCES else ""
    with session_scope() as session:
        dataset = get_dataset(session, name)
        # What trains: the resolved view (one passing answer per input, the most trusted), as ids.
        training_ids = {entry.id for entry in best_entry_per_input(all_entries(session, dataset))}
        query = sa.select(DatasetEntry).where(DatasetEntry.dataset_id == dataset.id)
        if split:
            query = query.where(DatasetEntry.split == split)
        if provenance:
            query = query.where(DatasetEntry.provenance == provenance)
        if before is not None:
            query = query.where(DatasetEntry.id < before)
        entries = list(session.scalars(query.order_by(DatasetEntry.id.desc()).limit(PAGE_SIZE)))
    older = entries[-1].id if len(entries) == PAGE_SIZE else None
    return web.render(
        request,
        "dataset.html",
        summary=summary,
        entries=entries,
        training_ids=training_ids,
        splits=SPLITS,
        provenances=PROVENANCES,
        query={"split": split, "provenance": provenance},
        before=before,
        older=older,
    )


@router.get("/datasets/{name}/entries/{entry_id}", response_class=HTMLResponse)
def entry_page(request: Request, name: str, entry_id: int) -> HTMLResponse:
    with session_scope() as session:
        entry = session.get(DatasetEntry, entry_id)
        dataset = session.get(Dataset, entry.dataset_id) if entry is not None else None
        if entry is None or dataset is None or dataset.name != name:
            raise web.NotFound(f"dataset {name!r} has no entry {entry_id}")
        # Every answer to the same input, so a reviewer sees what a human fix replaced.
        siblings = list(
            session.scalars(
                sa.select(DatasetEntry)
                .where(DatasetEntry.dataset_id == dataset.id, DatasetEntry.input_hash == entry.input_hash)
                .order_by(DatasetEntry.id)
            )
        )
        training_ids = {e.id for e in best_entry_per_input(siblings)}
    return web.render(request, "entry.html", dataset=dataset, entry=entry, siblings=siblings, training_ids=training_ids)

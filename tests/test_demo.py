"""`tuneloop demo` end to end on the bundled base, at a small size: every stage of the loop runs for real."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console


@pytest.mark.slow
def test_the_demo_runs_the_whole_loop(converted_home: Path, tuneloop_home: Path, tmp_path: Path) -> None:
    from tuneloop.data.datasets import summarize_dataset
    from tuneloop.demo.run import DEMO_DATASET, DEMO_TASK, run_demo
    from tuneloop.registry.versions import resolve_version
    from tuneloop.review import queue_depth
    from tuneloop.store.keys import create_key
    from tuneloop.store.logs import LogFilter, list_logs

    (tuneloop_home / "cache").mkdir(parents=True, exist_ok=True)
    (tuneloop_home / "cache" / "bases").symlink_to(converted_home / "cache" / "bases")  # reuse the conversion
    create_key("someone", role="admin")  # as the demo suggests: its loopback servers must still take its calls
    out = io.StringIO()
    report = run_demo(
        out_dir=tmp_path / "demo", n_documents=24, n_eval=2, n_captured=4, console=Console(file=out, width=200)
    )
    text = out.getvalue()

    # 5. base and fine-tune compared on the same test documents
    assert [model.name for model in report.models] == ["smollm2-135m-instruct", f"{DEMO_TASK}@1"]
    assert all(model.results == 2 for model in report.models)
    assert (tmp_path / "demo" / "eval-report.html").is_file()
    # 3. the demo traffic went through the gateway into the logs and from there into the dataset
    assert len(list_logs(LogFilter(metadata={"source": "demo"}))) == 4
    counts: dict[str, int] = {}
    for (_, provenance), count in summarize_dataset(DEMO_DATASET).by_split_provenance.items():
        counts[provenance] = counts.get(provenance, 0) + count
    assert counts == {"human": 24, "log": 4}
    # 4. the fine-tune said what it would cost before starting, and fitted the demo's time budget
    assert "this run: " in text and "--time-budget 6m" in text
    # 4 and 6. the fine-tune was registered and promoted; the served answers name the resolved version
    assert resolve_version(f"{DEMO_TASK}@prod").version == 1
    assert text.count(f"{DEMO_TASK}@1 in ") == 2
    # the base's zero-shot answers through the gateway failed the task's checks: escalated for review
    assert sum(queue_depth().values()) >= 1
    assert "tuneloop ui" in text and "review queue:" in text

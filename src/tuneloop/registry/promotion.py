"""Promote and roll back aliases (``task@prod``): atomic moves with an audit trail.

Each move is one transaction that updates the ``aliases`` row and appends an ``alias_events`` row (who,
when, from, to, why), so a reader sees either the old target or the new one, and the history always
explains the current state. A running server re-reads aliases (``serve/engine.py``), so a move takes
effect without a restart.

Rollback moves the alias back to where its last move came from (the ``from`` of the latest ``move`` event;
the history also holds the starts and ends of canaries and shadows, tuneloop.registry.rollouts, which
rollback skips); rolling back twice therefore returns to the version that was rolled back. Any move ends
the alias's running canary and shadow.

Promotion also holds the task's ``licenses:`` (task.py): a version whose base's license is not listed is
refused, and nothing moves. The task is the one ``load_task_named`` finds ($TUNELOOP_HOME/tasks, then the
packaged ones), as at serve time; a rollback returns to a version that was allowed when it was promoted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from tuneloop.errors import TuneloopError
from tuneloop.licenses import license_allowed
from tuneloop.registry.ids import ALIAS_PATTERN
from tuneloop.registry.versions import ModelVersionInfo, resolve_version, verify_version, version_base_license
from tuneloop.task import Task, TaskSpecError, load_task_named, named_task_source

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from tuneloop.store.models import Alias, AliasEvent


@dataclass(frozen=True)
class AliasMove:
    """One recorded move of ``task@alias``; version ids are ``task@N`` (None: the alias did not exist)."""

    task: str
    alias: str
    from_version: str | None
    to_version: str | None
    actor: str | None
    reason: str | None
    at: datetime | None
    kind: str = "move"  # or a rollout's event: canary_start, canary_tripped, shadow_stopped, ...
    details: dict[str, Any] | None = None  # a rollout's settings or figures
    rollout_id: int | None = None


def promote(task: str, version: str, alias: str, actor: str | None = None, reason: str | None = None) -> AliasMove:
    """Point ``task@alias`` at ``version`` (``task@N``, ``task@sha256:…``, or another alias's target).

    The version's files are verified first: a tampered version is never promoted; nor one whose base's
    license the task's ``licenses:`` does not list.
    """
    from tuneloop.store import session_scope
    from tuneloop.store.models import ModelVersion

    _check_alias(task, alias)
    reference = version if "@" in version else f"{task}@{version}"
    info = resolve_version(reference, verify=False)
    if info.task != task:
        raise TuneloopError(f"{info.id} is a version of {info.task}, not {task}", where=f"{task}@{alias}")
    verify_version(info)
    check_license(info, alias)
    with session_scope() as session:
        target_id = session.scalar(
            sa.select(ModelVersion.id).where(ModelVersion.task == task, ModelVersion.version == info.version)
        )
        return _move(session, task, alias, target_id, actor, reason)


def allowed_licenses(task: str) -> list[str] | None:
    """The license ids the task's ``licenses:`` allows for its versions' bases; None: any."""
    spec = _task_spec(task)
    return spec.licenses if spec is not None else None


def check_license(info: ModelVersionInfo, alias: str = "prod") -> None:
    """Refuse (TuneloopError, with the fix) a version whose base's license its task does not allow."""
    allowed = allowed_licenses(info.task)
    if allowed is None:
        return
    found = version_base_license(info)
    if license_allowed(found.id, allowed):
        return
    written = found.text if found.text == found.id else f"{found.text!r} ({found.id})"
    raise TuneloopError(
        f"{info.id} is built on {info.base_id}, whose license is {written}; task {info.task} allows only "
        f"{', '.join(allowed)}, so it cannot become {info.task}@{alias}",
        where=f"{named_task_source(info.task)}: licenses",
        hint=(
            f"if {found.id}'s terms suit this use, add {found.id} to the task's licenses; otherwise promote a "
            "version trained on a base whose license is allowed (`tuneloop bases list` shows each base's license)"
        ),
    )


def _task_spec(task: str) -> Task | None:
    """The task's spec as load_task_named finds it; None when there is none (no licenses to hold)."""
    try:
        return load_task_named(task)
    except TaskSpecError:
        raise  # a broken spec is reported, never read as "no restriction"
    except TuneloopError:
        return None


def rollback(task: str, alias: str, actor: str | None = None, reason: str | None = None) -> AliasMove:
    """Move ``task@alias`` back to the version its latest move came from."""
    from tuneloop.store import session_scope
    from tuneloop.store.models import AliasEvent

    _check_alias(task, alias)
    with session_scope() as session:
        last = session.scalar(
            sa.select(AliasEvent)
            .where(AliasEvent.task == task, AliasEvent.alias == alias, AliasEvent.kind == "move")
            .order_by(AliasEvent.id.desc())
            .limit(1)
        )
        if last is None:
            raise TuneloopError(
                f"{task}@{alias} has never been moved", where=f"{task}@{alias}", hint="promote a version first"
            )
        if last.from_version_id is None:
            raise TuneloopError(
                f"{task}@{alias} has no earlier version to roll back to (its last move created it)",
                where=f"{task}@{alias}",
                hint=f"promote the version you want: tuneloop models promote {task}@N --alias {alias}",
            )
        return _move(session, task, alias, last.from_version_id, actor, reason or "rollback")


def alias_history(task: str, alias: str | None = None) -> list[AliasMove]:
    """Every recorded move of the task's aliases (or one alias), oldest first."""
    from tuneloop.store import session_scope
    from tuneloop.store.models import AliasEvent

    with session_scope() as session:
        query = sa.select(AliasEvent).where(AliasEvent.task == task).order_by(AliasEvent.id)
        if alias is not None:
            query = query.where(AliasEvent.alias == alias)
        return [_as_move(session, event) for event in session.scalars(query)]


def _move(session: Session, task: str, alias: str, target_id: int, actor: str | None, reason: str | None) -> AliasMove:
    from tuneloop.registry.rollouts import end_rollouts_of_alias
    from tuneloop.store.models import Alias, AliasEvent

    row = lock_alias(session, task, alias)
    previous = row.version_id if row is not None else None
    if row is None:
        session.add(Alias(task=task, alias=alias, version_id=target_id))
    else:
        row.version_id = target_id
    event = AliasEvent(
        task=task, alias=alias, from_version_id=previous, to_version_id=target_id, actor=actor, reason=reason
    )
    session.add(event)
    session.flush()
    end_rollouts_of_alias(session, task, alias, target_id, actor)
    return _as_move(session, event)


def lock_alias(session: Session, task: str, alias: str) -> Alias | None:
    """The alias's row, locked for the transaction where the database has row locks (PostgreSQL), so two
    concurrent moves (or a move and a rollout's start) serialise; SQLite serialises writers by itself."""
    from tuneloop.store.models import Alias

    return session.scalar(sa.select(Alias).where(Alias.task == task, Alias.alias == alias).with_for_update())


def _as_move(session: Session, event: AliasEvent) -> AliasMove:
    from tuneloop.store.models import ModelVersion

    def name(version_id: int | None) -> str | None:
        if version_id is None:
            return None
        row = session.get(ModelVersion, version_id)
        return f"{row.task}@{row.version}" if row is not None else None

    return AliasMove(
        task=event.task,
        alias=event.alias,
        from_version=name(event.from_version_id),
        to_version=name(event.to_version_id),
        actor=event.actor,
        reason=event.reason,
        at=event.created_at,
        kind=event.kind or "move",
        details=event.details,
        rollout_id=event.rollout_id,
    )


def _check_alias(task: str, alias: str) -> None:
    if not ALIAS_PATTERN.match(alias):
        raise TuneloopError(
            f"{alias!r} is not a valid alias (a lowercase letter, then letters, digits, '_' or '-')",
            where=f"{task}@{alias}",
        )

"""Aliases (``task@prod``): a movable name for one version, every move recorded in ``alias_events``.

Minimal for now: set or move an alias. Promote/rollback with their checks belong to the serve stage and
build on this.
"""

from __future__ import annotations

import sqlalchemy as sa

from tuneloop.errors import TuneloopError
from tuneloop.registry.ids import ALIAS_PATTERN, VersionRef
from tuneloop.registry.versions import ModelVersionInfo, resolve_version


def set_alias(
    task: str, alias: str, target: VersionRef | str, *, actor: str | None = None, reason: str | None = None
) -> ModelVersionInfo:
    """Point ``task@alias`` at an immutable version (``task@N`` or ``task@sha256:...``); returns it."""
    from tuneloop.store import session_scope
    from tuneloop.store.models import Alias, AliasEvent, ModelVersion

    if not ALIAS_PATTERN.match(alias):
        raise TuneloopError(
            f"{alias!r} is not a valid alias (a lowercase letter, then letters, digits, '_' or '-')", where=alias
        )
    info = resolve_version(target, verify=False)
    if info.task != task:
        raise TuneloopError(f"{info.id} is a version of {info.task}, not {task}", where=f"{task}@{alias}")
    with session_scope() as session:
        version_id = session.scalar(
            sa.select(ModelVersion.id).where(ModelVersion.task == task, ModelVersion.version == info.version)
        )
        row = session.get(Alias, (task, alias))
        previous = row.version_id if row is not None else None
        if row is None:
            session.add(Alias(task=task, alias=alias, version_id=version_id))
        else:
            row.version_id = version_id
        if previous != version_id:
            session.add(
                AliasEvent(
                    task=task,
                    alias=alias,
                    from_version_id=previous,
                    to_version_id=version_id,
                    actor=actor,
                    reason=reason,
                )
            )
    return info

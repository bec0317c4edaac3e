"""Rollouts: a canary split or a live shadow of ``task@alias`` towards a candidate version.

- **Canary** (``tuneloop models canary T@5 --alias prod --percent 5``): that share of the alias's live calls
  through the gateway is answered by the candidate instead (sticky per caller when a ``sticky_tag`` names the
  tag that identifies one). A guard (:class:`Guard`, run by the gateway or ``tuneloop monitor watch``:
  tuneloop.monitor.canary) switches it off when the candidate does measurably worse than production.
- **Shadow** (``tuneloop models shadow T@5 --alias prod --percent 10``): that share of the calls is also sent
  to the candidate after production answered; the candidate's answer is logged, linked to the production
  call and compared field by field, and never reaches the client (tuneloop.monitor.live_shadow).

A rollout is a ``rollouts`` row; its start and end are events in the alias history (``alias_events.kind``:
``canary_start``, ``canary_tripped``, ``shadow_stopped``, …) with the settings or the figures in ``details``,
so ``tuneloop models history`` tells the whole story of an alias. Starting one takes the alias row's lock,
like a promotion, so two starts cannot both win; at most one canary and one shadow are active per alias.
Any move of the alias (promote, rollback) ends its rollouts: a canary whose candidate became the alias's
version is ``promoted``, anything else ``ended`` (production changed under the comparison).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from tuneloop.errors import TuneloopError
from tuneloop.registry.ids import VersionRef, parse_model_id

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from tuneloop.store.models import Rollout as RolloutRow

KINDS = ("canary", "shadow")


@dataclass(frozen=True)
class Guard:
    """When a canary is switched off: the candidate's rate (or p95 latency) is worse than production's by
    more than the margin, tested one-sided at ``alpha`` over the last ``window_s`` seconds of calls, once
    each arm has ``min_calls`` calls there. Margins are absolute for rates (0.02: two points), relative for
    latency (0.5: 50 % slower)."""

    max_error_increase: float = 0.02
    max_check_failure_increase: float = 0.05
    max_p95_increase: float = 0.5
    min_calls: int = 50
    window_s: float = 900.0
    alpha: float = 0.01

    def __post_init__(self) -> None:
        for name in ("max_error_increase", "max_check_failure_increase"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise TuneloopError(f"must be in [0, 1), got {value}", where=f"--{name.replace('_', '-')}")
        if self.max_p95_increase < 0:
            raise TuneloopError(f"must be 0 or more, got {self.max_p95_increase}", where="--max-p95-increase")
        if self.min_calls < 5:
            raise TuneloopError(f"must be at least 5, got {self.min_calls}", where="--min-calls")
        if self.window_s <= 0:
            raise TuneloopError("must be longer than zero", where="--window")
        if not 0 < self.alpha < 0.5:
            raise TuneloopError(f"must be in (0, 0.5), got {self.alpha}", where="--alpha")

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Guard:
        known = set(cls.__dataclass_fields__)
        return cls(**{key: value for key, value in (data or {}).items() if key in known})

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Rollout:
    """One canary or shadow, as stored; versions are named ``task@N``."""

    id: int
    kind: str
    task: str
    alias: str
    candidate: str
    production: str | None  # the alias's version when it started
    percent: float
    sticky_tag: str | None
    guard: Guard
    state: str
    started_at: datetime
    started_by: str | None
    ended_at: datetime | None = None
    ended_by: str | None = None
    end_reason: str | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    figures_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.state == "active"

    @property
    def alias_id(self) -> str:
        return f"{self.task}@{self.alias}"

    def describe(self) -> str:
        sticky = f", sticky by {self.sticky_tag}" if self.sticky_tag else ""
        return f"{self.kind} of {self.candidate} on {self.percent:g} % of {self.alias_id}{sticky}"


def start_canary(
    candidate: str,
    alias: str,
    percent: float,
    *,
    sticky_tag: str | None = None,
    guard: Guard | None = None,
    actor: str | None = None,
    reason: str | None = None,
) -> Rollout:
    """Send ``percent`` % of ``task@alias``'s calls through the gateway to ``candidate`` (``task@N``)."""
    return _start("canary", candidate, alias, percent, sticky_tag, guard or Guard(), actor, reason)


def start_shadow(
    candidate: str, alias: str, percent: float, *, actor: str | None = None, reason: str | None = None
) -> Rollout:
    """Mirror ``percent`` % of ``task@alias``'s calls through the gateway to ``candidate`` (answers only logged)."""
    return _start("shadow", candidate, alias, percent, None, Guard(), actor, reason)


def stop_rollout(task: str, alias: str, kind: str, *, actor: str | None = None, reason: str | None = None) -> Rollout:
    """End the active ``kind`` (canary or shadow) of ``task@alias`` by hand; TuneloopError when there is none."""
    from tuneloop.store import session_scope
    from tuneloop.store.models import Rollout as RolloutRow

    _check_kind(kind)
    with session_scope() as session:
        row = session.scalar(
            sa.select(RolloutRow)
            .where(RolloutRow.task == task, RolloutRow.alias == alias, RolloutRow.kind == kind)
            .where(RolloutRow.state == "active")
            .with_for_update()
        )
        if row is None:
            raise TuneloopError(
                f"{task}@{alias} has no {kind} running",
                where=f"{task}@{alias}",
                hint=f"`tuneloop models rollouts {task}` lists its rollouts",
            )
        _end(session, row, "stopped", actor, reason or "stopped by hand")
        return _as_rollout(session, row)


def trip_rollout(rollout_id: int, reason: str, figures: dict[str, Any], *, actor: str = "guard") -> Rollout | None:
    """The guard switches a canary off (``tripped``), recording why and the figures; None when it had already
    ended (another gateway worker, or a person, got there first)."""
    return _end_by_id(rollout_id, "tripped", actor, reason, figures)


def end_rollouts_of_alias(session: Session, task: str, alias: str, new_version_id: int, actor: str | None) -> None:
    """Called inside an alias move: its active rollouts end (``promoted`` when the alias now points at the
    canary's candidate, else ``ended``)."""
    from tuneloop.store.models import Rollout as RolloutRow

    rows = session.scalars(
        sa.select(RolloutRow).where(RolloutRow.task == task, RolloutRow.alias == alias, RolloutRow.state == "active")
    ).all()
    for row in rows:
        if row.candidate_version_id == new_version_id:
            _end(session, row, "promoted", actor, f"{task}@{alias} moved to the candidate")
        else:
            _end(session, row, "ended", actor, f"{task}@{alias} moved, so production changed under the {row.kind}")


def active_rollouts(url: str | None = None) -> list[Rollout]:
    """Every active rollout (the gateway re-reads these every second)."""
    from tuneloop.store import session_scope
    from tuneloop.store.models import Rollout as RolloutRow

    with session_scope(url) as session:
        rows = session.scalars(sa.select(RolloutRow).where(RolloutRow.state == "active").order_by(RolloutRow.id))
        return [_as_rollout(session, row) for row in rows]


def list_rollouts(task: str | None = None, alias: str | None = None, url: str | None = None) -> list[Rollout]:
    """Rollouts (of one task, or one alias), newest first."""
    from tuneloop.store import session_scope
    from tuneloop.store.models import Rollout as RolloutRow

    with session_scope(url) as session:
        query = sa.select(RolloutRow).order_by(RolloutRow.id.desc())
        if task is not None:
            query = query.where(RolloutRow.task == task)
        if alias is not None:
            query = query.where(RolloutRow.alias == alias)
        return [_as_rollout(session, row) for row in session.scalars(query)]


def get_rollout(rollout_id: int, url: str | None = None) -> Rollout:
    from tuneloop.store import session_scope
    from tuneloop.store.models import Rollout as RolloutRow

    with session_scope(url) as session:
        row = session.get(RolloutRow, rollout_id)
        if row is None:
            raise TuneloopError(f"no rollout {rollout_id}", where="rollout id")
        return _as_rollout(session, row)


def record_figures(rollout_id: int, figures: dict[str, Any], url: str | None = None) -> None:
    """Keep the watcher's latest figures on the rollout (the UI and ``models rollouts`` show them)."""
    from tuneloop.store import session_scope, utcnow
    from tuneloop.store.models import Rollout as RolloutRow

    with session_scope(url) as session:
        session.execute(
            sa.update(RolloutRow).where(RolloutRow.id == rollout_id).values(figures=figures, figures_at=utcnow())
        )


def summarize_figures(figures: dict[str, Any]) -> str:
    """A rollout's latest figures in one line (the CLI and the UI show it)."""
    if not figures:
        return "-"
    if figures.get("kind") == "shadow":
        agreement = figures.get("agreement")
        failing = figures.get("check_failure_rate")
        return (
            f"{figures.get('calls', 0)} mirrored · agreement {_rate(agreement)} · candidate check failures "
            f"{_rate(failing)}"
        )
    arms = figures.get("arms") or {}
    parts = []
    for name in ("production", "candidate"):
        arm = arms.get(name) or {}
        p95 = arm.get("p95_ms")
        parts.append(
            f"{name}: {arm.get('calls', 0)} calls, errors {_rate(arm.get('error_rate'))}, checks failed "
            f"{_rate(arm.get('check_failure_rate'))}, p95 {'-' if p95 is None else f'{p95:.0f} ms'}"
        )
    if figures.get("waiting"):
        parts.append(f"guard waiting: {figures['waiting']}")
    return " · ".join(parts)


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


# --- inside --------------------------------------------------------------------------------------------


def _start(
    kind: str,
    candidate: str,
    alias: str,
    percent: float,
    sticky_tag: str | None,
    guard: Guard,
    actor: str | None,
    reason: str | None,
) -> Rollout:
    from tuneloop.registry.promotion import check_license, lock_alias
    from tuneloop.registry.versions import resolve_version, verify_version
    from tuneloop.store import session_scope
    from tuneloop.store.models import AliasEvent, ModelVersion
    from tuneloop.store.models import Rollout as RolloutRow

    ref = parse_model_id(candidate)
    if not isinstance(ref, VersionRef) or ref.alias is not None:
        # An alias moves; a rollout compares one immutable version against the alias's.
        raise TuneloopError(
            f"{candidate!r} is not a version", where="candidate", hint="name one as task@N or task@sha256:<hex>"
        )
    if not 0 < percent <= 100:
        raise TuneloopError(f"must be more than 0 and at most 100, got {percent:g}", where="--percent")
    if sticky_tag is not None and not sticky_tag.strip():
        raise TuneloopError("must name a tag key (e.g. user, customer)", where="--sticky-tag")
    info = resolve_version(candidate, verify=False)
    verify_version(info)  # a tampered candidate never takes traffic
    check_license(info, alias)
    task = info.task
    with session_scope() as session:
        alias_row = lock_alias(session, task, alias)
        if alias_row is None:
            raise TuneloopError(
                f"{task}@{alias} does not exist, so it has no traffic to split",
                where=f"{task}@{alias}",
                hint=f"promote a version first: tuneloop models promote {task}@N --alias {alias}",
            )
        candidate_id = session.scalar(
            sa.select(ModelVersion.id).where(ModelVersion.task == task, ModelVersion.version == info.version)
        )
        if alias_row.version_id == candidate_id:
            raise TuneloopError(
                f"{info.id} is already {task}@{alias}'s version",
                where=f"{task}@{alias}",
                hint="a rollout compares a different version against the alias's",
            )
        running = session.scalar(
            sa.select(RolloutRow).where(
                RolloutRow.task == task,
                RolloutRow.alias == alias,
                RolloutRow.kind == kind,
                RolloutRow.state == "active",
            )
        )
        if running is not None:
            current = _as_rollout(session, running)
            raise TuneloopError(
                f"{task}@{alias} already has a {current.describe()} (rollout {current.id}, since "
                f"{current.started_at:%Y-%m-%d %H:%M} UTC)",
                where=f"{task}@{alias}",
                hint=f"stop it first: tuneloop models {kind} {task} --alias {alias} --stop",
            )
        row = RolloutRow(
            kind=kind,
            task=task,
            alias=alias,
            candidate_version_id=candidate_id,
            production_version_id=alias_row.version_id,
            percent=float(percent),
            sticky_tag=sticky_tag.strip() if sticky_tag else None,
            guard=guard.to_json() if kind == "canary" else None,
            state="active",
            started_by=actor,
        )
        session.add(row)
        session.flush()
        details: dict[str, Any] = {"percent": row.percent}
        if kind == "canary":
            details.update(sticky_tag=row.sticky_tag, guard=row.guard)
        session.add(
            AliasEvent(
                task=task,
                alias=alias,
                from_version_id=alias_row.version_id,
                to_version_id=candidate_id,
                actor=actor,
                reason=reason,
                kind=f"{kind}_start",
                rollout_id=row.id,
                details=details,
            )
        )
        session.flush()
        return _as_rollout(session, row)


def _end_by_id(
    rollout_id: int, state: str, actor: str | None, reason: str, figures: dict[str, Any] | None
) -> Rollout | None:
    from tuneloop.store import session_scope
    from tuneloop.store.models import Rollout as RolloutRow

    with session_scope() as session:
        row = session.scalar(sa.select(RolloutRow).where(RolloutRow.id == rollout_id).with_for_update())
        if row is None or row.state != "active":
            return None
        _end(session, row, state, actor, reason, figures)
        return _as_rollout(session, row)


def _end(
    session: Session,
    row: RolloutRow,
    state: str,
    actor: str | None,
    reason: str,
    figures: dict[str, Any] | None = None,
) -> None:
    from tuneloop.store import utcnow
    from tuneloop.store.models import AliasEvent

    now = utcnow()
    values: dict[str, Any] = {"state": state, "ended_at": now, "ended_by": actor, "end_reason": reason}
    if figures is not None:
        values.update(figures=figures, figures_at=now)
    # Conditional on still being active: of two gateway workers whose guards trip at once, one records it.
    table = type(row)
    ended = session.execute(
        sa.update(table)
        .where(table.id == row.id, table.state == "active")
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if ended.rowcount == 0:
        return
    session.add(
        AliasEvent(
            task=row.task,
            alias=row.alias,
            from_version_id=row.production_version_id,
            to_version_id=row.candidate_version_id,
            actor=actor,
            reason=reason,
            kind=f"{row.kind}_{state}",
            rollout_id=row.id,
            details=figures if figures is not None else row.figures,
        )
    )
    session.flush()
    session.refresh(row)


def _as_rollout(session: Session, row: RolloutRow) -> Rollout:
    from tuneloop.store.models import ModelVersion

    def name(version_id: int | None) -> str | None:
        if version_id is None:
            return None
        version = session.get(ModelVersion, version_id)
        return f"{version.task}@{version.version}" if version is not None else None

    return Rollout(
        id=row.id,
        kind=row.kind,
        task=row.task,
        alias=row.alias,
        candidate=name(row.candidate_version_id) or "?",
        production=name(row.production_version_id),
        percent=row.percent,
        sticky_tag=row.sticky_tag,
        guard=Guard.from_json(row.guard),
        state=row.state,
        started_at=row.started_at,
        started_by=row.started_by,
        ended_at=row.ended_at,
        ended_by=row.ended_by,
        end_reason=row.end_reason,
        figures=dict(row.figures or {}),
        figures_at=row.figures_at,
    )


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise TuneloopError(f"unknown rollout kind {kind!r}", where="kind", hint="canary or shadow")

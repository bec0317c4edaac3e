"""The one store every stage reads and writes: SQLAlchemy models, Alembic migrations, sessions.

Use ``session_scope()`` for all access; it applies missing migrations on first use::

    from tuneloop.store import Dataset, session_scope

    with session_scope() as session:
        session.add(Dataset(name="liability-v1", task="liability-extraction"))
"""

from tuneloop.store.db import (
    SchemaUpgrade,
    check_connection,
    current_revision,
    dispose_engines,
    ensure_schema,
    get_engine,
    head_revision,
    is_known_revision,
    mask_url,
    resolve_url,
    session_scope,
    upgrade,
)
from tuneloop.store.models import (
    PROVENANCES,
    REVIEW_REASONS,
    REVIEW_STATUSES,
    ROLLOUT_ARMS,
    ROLLOUT_KINDS,
    ROLLOUT_STATES,
    SPLITS,
    Alias,
    AliasEvent,
    ApiKey,
    Base,
    Dataset,
    DatasetEntry,
    DeadLetter,
    EvalResult,
    EvalRun,
    ModelVersion,
    RequestLog,
    ReviewItem,
    Rollout,
    TeacherLabel,
    utcnow,
)

__all__ = [
    "PROVENANCES",
    "REVIEW_REASONS",
    "REVIEW_STATUSES",
    "ROLLOUT_ARMS",
    "ROLLOUT_KINDS",
    "ROLLOUT_STATES",
    "SPLITS",
    "Alias",
    "AliasEvent",
    "ApiKey",
    "Base",
    "Dataset",
    "DatasetEntry",
    "DeadLetter",
    "EvalResult",
    "EvalRun",
    "ModelVersion",
    "RequestLog",
    "ReviewItem",
    "Rollout",
    "SchemaUpgrade",
    "TeacherLabel",
    "check_connection",
    "current_revision",
    "dispose_engines",
    "ensure_schema",
    "get_engine",
    "head_revision",
    "is_known_revision",
    "mask_url",
    "resolve_url",
    "session_scope",
    "upgrade",
    "utcnow",
]

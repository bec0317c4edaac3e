"""Rollouts in the gateway: which arm of a canary answers a call, and mirroring calls to a shadow.

The gateway keeps the active rollouts (tuneloop.registry.rollouts) in memory, re-read from the store every
``rollouts.refresh_s`` seconds, so starting, stopping or a guard's trip reaches every gateway process within
about a second. A call whose target model is an alias (``T@prod``, as a route's model or ``upstream/T@prod``)
with a rollout is affected:

- **canary**: with probability ``percent``/100 the call goes to the candidate (``T@5``) at the same upstream,
  with the same fallbacks. With a ``sticky_tag`` the arm is a hash of the rollout and the caller's value of
  that tag (``x-tuneloop-tags``/``metadata``; ``user`` also reads the request's ``user`` field), so one
  caller stays on one arm; calls without the tag are drawn at random. Both arms are logged with the
  rollout's id and arm; the response carries ``x-tuneloop-rollout: <id>; arm=<arm>; model=<version>``.
- **shadow**: with probability ``percent``/100, once production answered (and only for calls that are
  logged), the same request goes to the candidate in the background, never streamed, with
  ``x-tuneloop-shadow`` so a tuneloop server only checks the answer (no review item, no fallback, no 422).
  Its answer is compared with production's field by field (tuneloop.monitor.live_shadow) and logged as its
  own row linked to the production call (``shadow_of``). At most ``shadow_max_in_flight`` mirrored calls run
  at once; past that a call is not mirrored (counted), so a slow candidate can never build a backlog or
  hold the gateway's memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from tuneloop.capture.records import CallRecord
from tuneloop.capture.routing import Target
from tuneloop.errors import TuneloopError
from tuneloop.registry.ids import VersionRef, parse_model_id
from tuneloop.registry.rollouts import Rollout, active_rollouts
from tuneloop.review.policy import SHADOW_HEADER
from tuneloop.task import Task, load_task

log = logging.getLogger(__name__)

ROLLOUT_HEADER = "x-tuneloop-rollout"
NOT_MIRRORED = ("stream", "stream_options")
_PARSE_CACHE_LIMIT = 4096


@dataclass(frozen=True)
class RolloutChoice:
    """What the rollouts of a call's alias decided for it."""

    canary: Rollout | None = None
    arm: str | None = None  # production | candidate (canary only)
    shadow: Rollout | None = None

    def header(self) -> str | None:
        if self.canary is None:
            return None
        model = self.canary.candidate if self.arm == "candidate" else (self.canary.production or "")
        return f"{self.canary.id}; arm={self.arm}; model={model}"


@dataclass(frozen=True)
class MirroredCall:
    """An answered production call to mirror: how to send a call upstream (``send(targets, body, headers)``,
    an UpstreamReply), the call's targets and forwarded body, its log record and answer, and where a log
    record goes (the gateway's log writer)."""

    send: Callable[[list[Target], dict[str, Any], dict[str, str]], Awaitable[Any]]
    targets: list[Target]
    forward: dict[str, Any]
    production: CallRecord
    answer: dict[str, Any] | None
    submit: Callable[[CallRecord], Awaitable[None]]


class RolloutTable:
    """The active rollouts by alias, as this gateway process last read them."""

    def __init__(self, url: str | None, *, refresh_s: float = 1.0, shadow_max_in_flight: int = 32) -> None:
        self.url = url
        self.refresh_s = refresh_s
        self.shadow_max_in_flight = shadow_max_in_flight
        self._by_alias: dict[tuple[str, str], tuple[Rollout | None, Rollout | None]] = {}
        self._aliases: dict[str, tuple[str, str] | None] = {}
        self._tasks: dict[str, Task] = {}
        self._in_flight = 0
        self._mirrors: set[asyncio.Task[Any]] = set()
        self.rng = random.Random()
        self.registry = CollectorRegistry()
        self.shadow_calls = Counter(
            "tuneloop_gateway_shadow_calls_total",
            "Calls mirrored to a shadow candidate, by rollout and outcome (skipped: too many in flight)",
            ["rollout", "outcome"],
            registry=self.registry,
        )
        self.canary_calls = Counter(
            "tuneloop_gateway_canary_calls_total",
            "Calls of a canary's alias by arm",
            ["rollout", "arm"],
            registry=self.registry,
        )

    # --- the table ------------------------------------------------------------------------------------

    def load(self, rollouts: list[Rollout]) -> None:
        table: dict[tuple[str, str], tuple[Rollout | None, Rollout | None]] = {}
        for rollout in rollouts:
            canary, shadow = table.get((rollout.task, rollout.alias), (None, None))
            if rollout.kind == "canary":
                canary = rollout
            else:
                shadow = rollout
            table[(rollout.task, rollout.alias)] = (canary, shadow)
        self._by_alias = table

    def refresh(self) -> None:
        """Read the active rollouts again (blocking: call it in a thread)."""
        self.load(active_rollouts(self.url))

    async def refresh_forever(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.refresh)
            except Exception:
                log.exception("reading the active rollouts failed; keeping the ones loaded")
            await asyncio.sleep(self.refresh_s)

    @property
    def empty(self) -> bool:
        return not self._by_alias

    # --- per call ---------------------------------------------------------------------------------

    def choose(self, model: str, payload: dict[str, Any], metadata: dict[str, str]) -> RolloutChoice | None:
        """The rollouts of the alias ``model`` names (the model a target sends upstream), and the arm of this
        call; None when there are none (the usual case: a dict lookup)."""
        if not self._by_alias:
            return None
        alias = self._alias_of(model)
        if alias is None:
            return None
        canary, shadow = self._by_alias.get(alias, (None, None))
        if canary is None and shadow is None:
            return None
        arm = None
        if canary is not None:
            arm = "candidate" if self._draw(canary, payload, metadata) < canary.percent / 100 else "production"
            self.canary_calls.labels(str(canary.id), arm).inc()
        mirrored = shadow if shadow is not None and self.rng.random() < shadow.percent / 100 else None
        return RolloutChoice(canary, arm, mirrored)

    def _draw(self, canary: Rollout, payload: dict[str, Any], metadata: dict[str, str]) -> float:
        tag = canary.sticky_tag
        value = metadata.get(tag) if tag else None
        if value is None and tag == "user" and isinstance(payload.get("user"), str):
            value = payload["user"]
        if not value:
            return self.rng.random()
        digest = hashlib.blake2b(f"{canary.id}\x00{value}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64

    def _alias_of(self, model: str) -> tuple[str, str] | None:
        if model in self._aliases:
            return self._aliases[model]
        try:
            ref = parse_model_id(model)
        except TuneloopError:
            ref = None
        alias = (ref.task, ref.alias) if isinstance(ref, VersionRef) and ref.alias else None
        if len(self._aliases) >= _PARSE_CACHE_LIMIT:
            self._aliases.clear()  # clients may send any names; keep the cache bounded
        self._aliases[model] = alias
        return alias

    @staticmethod
    def candidate_targets(targets: list[Target], candidate: str) -> list[Target]:
        """The call's targets with the first one sent to ``candidate`` at the same upstream."""
        return [replace(targets[0], model=candidate), *targets[1:]]

    # --- shadows ------------------------------------------------------------------------------------

    def mirror(self, shadow: Rollout, call: MirroredCall) -> bool:
        """Start mirroring one answered call to ``shadow``'s candidate in the background; False when it was
        skipped (too many in flight)."""
        if self._in_flight >= self.shadow_max_in_flight:
            self.shadow_calls.labels(str(shadow.id), "skipped").inc()
            return False
        self._in_flight += 1
        task = asyncio.get_running_loop().create_task(self._mirror(shadow, call))
        self._mirrors.add(task)  # held until done: the loop keeps only weak references to tasks
        task.add_done_callback(self._mirrors.discard)
        return True

    async def _mirror(self, shadow: Rollout, call: MirroredCall) -> None:
        from tuneloop.capture.gateway import fill_from_reply
        from tuneloop.monitor.live_shadow import compare_answers

        outcome = "error"
        try:
            production = call.production
            body = {name: value for name, value in call.forward.items() if name not in NOT_MIRRORED}
            started = time.perf_counter()
            # Only the candidate: a production fallback answering for it would pass for the candidate.
            reply = await call.send(
                self.candidate_targets(call.targets[:1], shadow.candidate), body, {SHADOW_HEADER: str(shadow.id)}
            )
            elapsed = time.perf_counter() - started
            answer = reply.json_object() if reply.ok else None
            spec = await asyncio.to_thread(self._task, shadow.task)
            comparison = await asyncio.to_thread(compare_answers, spec, call.answer, answer)
            record = CallRecord(
                model_requested=shadow.candidate,
                request={**production.request, "model": shadow.candidate},
                status="ok" if reply.ok else "error",
                http_status=reply.status,
                response_body=reply.body,
                tags=[*production.tags, "shadow"],
                metadata={**production.metadata, "shadow_of": production.capture_id},
                api_key_id=production.api_key_id,
                latency_ms=elapsed * 1000,
                rollout_id=shadow.id,
                rollout_arm="shadow",
                shadow_of=production.capture_id,
                comparison=comparison,
                checks_passed=not comparison["check_failures"],
            )
            fill_from_reply(record, reply)
            await call.submit(record)
            outcome = "agreed" if comparison["agreed"] else "disagreed" if reply.ok else "error"
        except Exception:
            log.exception("mirroring a call to shadow %s (%s) failed", shadow.id, shadow.candidate)
        finally:
            self._in_flight -= 1
            self.shadow_calls.labels(str(shadow.id), outcome).inc()

    def _task(self, name: str) -> Task:
        spec = self._tasks.get(name)
        if spec is None:
            spec = self._tasks[name] = load_task(name)
        return spec

    async def close(self) -> None:
        """Let mirrored calls in flight finish (their rows go to the log before it is drained)."""
        if self._mirrors:
            await asyncio.wait(set(self._mirrors), timeout=30)

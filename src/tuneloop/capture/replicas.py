"""Replica pools: an upstream with several base URLs (``base_urls`` in its config), balanced by the gateway.

Each upstream has a :class:`ReplicaPool` (one with a single URL costs nothing: :meth:`ReplicaPool.pick`
returns it at once, and none of the bookkeeping below runs). With several:

- **Least outstanding.** A call goes to the replica with the fewest calls in flight (a stream counts
  until it ends), ties broken at random, so replicas of different speeds each get what they can take.
- **Adapter affinity.** A replica that already has the requested model loaded answers sooner: a cold
  replica must load the base (seconds) or the adapter first. What each has loaded comes from its
  ``GET /models`` listing, read at every health check: ``tuneloop serve`` lists every base and version with
  its ``state`` (hot, loading, warm, cold) and each version's aliases (``task@prod``), so an alias is as
  loaded as the version it names; vLLM (and most servers) list only what they have loaded (the base and
  every LoRA adapter by name), with no state, so listed means hot. A successful answer marks the model hot
  on that replica until the next listing says otherwise (it was loaded to answer). The rule is in
  :meth:`ReplicaPool.pick`.
- **Ejection.** ``eject_after_failures`` consecutive failed tries (a timeout, a connection refused or
  reset, a 5xx, a body that is not JSON) or failed health checks take a replica out of the pool; after
  ``eject_for_s`` its health check is tried every ``eject_for_s`` and the first that answers puts it back. A
  4xx is an answer (the replica is up); a 429 says nothing either way. When every replica is out, calls go
  to them anyway: the checks may lag, and trying beats refusing.
- **Health checks.** Every replica's ``GET {base_url}/models`` (2 s timeout) every ``health_check_s``, from the
  gateway's event loop (``UpstreamClient.check_replicas_forever``).

A failed try moves the call to a replica it has not tried yet, at once (forwarding.py): killing a replica
under load loses no call that can be retried. Everything here runs on the gateway's event loop, so the
counts need no lock; the metrics collector only reads them.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from tuneloop.upstreams import Upstream

log = logging.getLogger("tuneloop.capture.replicas")

# How ready a replica is to answer for a model, from its listing: a higher level answers sooner.
HOT, LOADING, WARM, COLD = 3, 2, 1, 0
STATE_LEVELS = {"hot": HOT, "loading": LOADING, "warm": WARM, "evicting": WARM, "cold": COLD}
PROBE_TIMEOUT_S = 2.0
MAX_LEARNED = 1024  # models marked hot from answers between two listings, per replica (clients pick names)


class Replica:
    """One base URL of a pool, with its load and health."""

    __slots__ = (
        "affinity",
        "chat_url",
        "checked_at",
        "ejected_at",
        "ejections",
        "failures",
        "label",
        "last_error",
        "models_url",
        "next_check_at",
        "outstanding",
        "url",
    )

    def __init__(self, url: str, label: str) -> None:
        self.url = url
        self.chat_url = f"{url}/chat/completions"
        self.models_url = f"{url}/models"
        self.label = label  # names it in error messages
        self.outstanding = 0  # calls in flight (a stream until it is closed)
        self.failures = 0  # consecutive failed tries or health checks
        self.ejected_at: float | None = None  # time.monotonic() when taken out; None while in
        self.ejections = 0
        self.last_error: str | None = None
        self.affinity: dict[str, int] = {}  # model name (id or alias) → HOT … COLD, from the listing
        self.next_check_at = 0.0  # the first health check runs at once
        self.checked_at: float | None = None

    @property
    def up(self) -> bool:
        return self.ejected_at is None

    def state(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "state": "up" if self.up else "ejected",
            "outstanding": self.outstanding,
            "consecutive_failures": self.failures,
            "ejections": self.ejections,
            "last_error": self.last_error,
            "hot_models": sorted(name for name, level in self.affinity.items() if level == HOT)[:50],
        }


class ReplicaPool:
    """The replicas of one upstream: which one takes the next try, and what tries and checks say of them."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.name = upstream.name
        self.several = len(upstream.base_urls) > 1
        self.replicas = [
            Replica(url, f"{upstream.name} replica {url}" if self.several else upstream.name)
            for url in upstream.base_urls
        ]
        self.only = self.replicas[0]

    def pick(self, model: str, tried: Collection[Replica] = ()) -> Replica:
        """The replica for the next try of a call for ``model``; ``tried``: those this call failed on."""
        if not self.several:
            return self.only
        # The replicas in the pool (all of them when every one is out: trying beats refusing), those this
        # call has not tried yet first; when it tried them all, one of them again (after a backoff).
        live = [r for r in self.replicas if r.ejected_at is None] or self.replicas
        candidates = ([r for r in live if r not in tried] if tried else live) or live
        if len(candidates) == 1:
            return candidates[0]
        # Affinity within a margin of load: among the replicas with at most `affinity_margin` more calls in
        # flight than the least loaded, those with the model most ready (hot > loading > warm > cold) are
        # preferred, and among them the least loaded. So a hot replica keeps its model's calls while it is
        # not much busier than the rest (loading elsewhere costs seconds, a few queued calls less), but
        # once it is `affinity_margin` calls ahead, the load goes elsewhere: affinity never starves a pool.
        # With affinity_margin 0 it only breaks ties between the least loaded.
        least = min(r.outstanding for r in candidates)
        within = [r for r in candidates if r.outstanding <= least + self.upstream.affinity_margin]
        best = max(r.affinity.get(model, COLD) for r in within)
        preferred = [r for r in within if r.affinity.get(model, COLD) == best]
        fewest = min(r.outstanding for r in preferred)
        ties = [r for r in preferred if r.outstanding == fewest]
        return ties[0] if len(ties) == 1 else random.choice(ties)

    # --- what tries say ---------------------------------------------------------------------------

    def observe(self, replica: Replica, status: int, outcome: str, model: str, error: str | None) -> None:
        """A try's result (``outcome``: forwarding.Attempt's) on ``replica``."""
        if 200 <= status < 300 and outcome == "ok":
            replica.failures = 0
            if replica.affinity.get(model) != HOT and len(replica.affinity) < MAX_LEARNED:
                replica.affinity[model] = HOT  # it answered, so it has the model loaded now
        elif outcome in ("timeout", "connection_error", "invalid_response") or status >= 500:
            self._failed(replica, error or outcome)
        elif status != 429:  # any other answer (a 4xx) comes from a replica that is up
            replica.failures = 0

    def _failed(self, replica: Replica, error: str) -> None:
        replica.failures += 1
        replica.last_error = error
        if replica.ejected_at is None and replica.failures >= self.upstream.eject_after_failures:
            now = time.monotonic()
            replica.ejected_at = now
            replica.ejections += 1
            replica.next_check_at = now + self.upstream.eject_for_s
            log.warning(
                "upstream %s: replica %s ejected after %d consecutive failures (last: %s); it is checked again in %gs",
                self.name,
                replica.url,
                replica.failures,
                error,
                self.upstream.eject_for_s,
            )

    # --- what health checks say -------------------------------------------------------------------

    def checked(self, replica: Replica, listing: Any | None, error: str | None = None) -> None:
        """A health check's result: the replica's ``/models`` listing, or ``error``."""
        now = time.monotonic()
        replica.checked_at = now
        if error is None:
            try:
                replica.affinity = affinity_from_listing(listing)
            except ValueError as exc:
                error = str(exc)
        if error is not None:
            self._failed(replica, f"health check: {error}")
        elif replica.ejected_at is not None and now - replica.ejected_at >= self.upstream.eject_for_s:
            replica.ejected_at = None
            replica.failures = 0
            log.info("upstream %s: replica %s answers its health check again; back in the pool", self.name, replica.url)
        out = replica.ejected_at is not None
        replica.next_check_at = now + (self.upstream.eject_for_s if out else self.upstream.health_check_s)

    def states(self) -> list[dict[str, Any]]:
        return [replica.state() for replica in self.replicas]


def affinity_from_listing(listing: Any) -> dict[str, int]:
    """Model name → readiness level (HOT … COLD) from a ``GET /models`` answer; ValueError when it is none."""
    data = listing.get("data") if isinstance(listing, dict) else None
    if not isinstance(data, list):
        raise ValueError('the /models answer is not a model listing ({"data": [...]})')
    levels: dict[str, int] = {}
    for item in data:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            continue
        state = item.get("state")
        # No state (vLLM, most servers): they list what they have loaded, so listed means hot.
        level = HOT if state is None else STATE_LEVELS.get(str(state), COLD)
        names = [item["id"]]
        aliases = item.get("aliases")  # tuneloop serve: the aliases that name this version now
        if isinstance(aliases, list):
            names += [alias for alias in aliases if isinstance(alias, str)]
        root = item.get("root")
        if isinstance(root, str) and "@sha256:" in root:  # tuneloop serve: the version named by its content
            names.append(root)
        for name in names:
            levels[name] = max(levels.get(name, COLD), level)
    return levels


class ReplicaCollector:
    """Prometheus metrics of the pools with several replicas, read at scrape time (nothing on the call path)."""

    def __init__(self, pools: Callable[[], Iterable[ReplicaPool]]) -> None:
        self.pools = pools

    def collect(self) -> Iterator[Metric]:
        labels = ["upstream", "replica"]
        up = GaugeMetricFamily(
            "tuneloop_gateway_replica_up", "1 while a replica takes calls, 0 while ejected", labels=labels
        )
        outstanding = GaugeMetricFamily(
            "tuneloop_gateway_replica_outstanding",
            "Calls in flight to a replica (a stream until it ends)",
            labels=labels,
        )
        ejections = CounterMetricFamily(
            "tuneloop_gateway_replica_ejections", "Times a replica was taken out of its pool", labels=labels
        )
        for pool in list(self.pools()):
            if not pool.several:
                continue
            for replica in pool.replicas:
                values = [pool.name, replica.url]
                up.add_metric(values, 1.0 if replica.ejected_at is None else 0.0)
                outstanding.add_metric(values, replica.outstanding)
                ejections.add_metric(values, replica.ejections)
        if up.samples:  # nothing at all without a pool
            yield from (up, outstanding, ejections)

"""What a request costs: API models by a versioned price table, self-hosted models by machine time.

API models (``openai/gpt-4o-mini``) are priced per token from ``prices.yaml`` (shipped, dated, named
by its ``version``), overridable under ``prices:`` in ``$TUNELOOP_HOME/config.yaml``. Self-hosted models
(a local base or fine-tune, an endpoint URL the table does not price) cost the machine's time:
``machine_usd_per_hour / 3600 × seconds the machine spends per request``. A local backend runs one
request at a time, so that is its generation time; an endpoint serving ``C`` requests at once is busy
``latency / C`` per request (the run's wall time over its request count, at concurrency ``C``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tuneloop.config import config_entry_error, get_settings, read_config_file
from tuneloop.errors import TuneloopError

DAYS_PER_MONTH = 30  # "per month" in reports is 30 days of the stated volume
_DATE_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8})$")


class Price(BaseModel):
    """USD per 1M tokens. ``cached_input`` is the price of prompt tokens the provider served from its
    prompt cache; when a provider has no such discount it is the input price."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cached_input: float | None = Field(default=None, ge=0)

    def request_cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        cached = min(max(cached_tokens, 0), prompt_tokens)
        cached_rate = self.input if self.cached_input is None else self.cached_input
        return ((prompt_tokens - cached) * self.input + cached * cached_rate + completion_tokens * self.output) / 1e6

    def describe(self) -> str:
        cached = f", cached input ${self.cached_input:g}" if self.cached_input is not None else ""
        return f"${self.input:g} in / ${self.output:g} out{cached} per 1M tokens"


@dataclass(frozen=True)
class PriceTable:
    version: str
    prices: dict[str, Price]
    machine_usd_per_hour: float
    machine_rate_source: str
    overridden: frozenset[str] = field(default_factory=frozenset)

    def lookup(self, model: str, upstream: str | None = None) -> tuple[str, Price] | None:
        """The entry that prices ``model`` (behind ``upstream``), and its key; None if none does."""
        candidates = [f"{upstream}/{model}"] if upstream else []
        candidates.append(model)
        undated = _DATE_SUFFIX.sub("", model)
        if undated != model:
            candidates += [f"{upstream}/{undated}"] if upstream else []
            candidates.append(undated)
        for key in candidates:
            if key in self.prices:
                return key, self.prices[key]
        return None

    def source_of(self, key: str) -> str:
        return "config.yaml" if key in self.overridden else f"price table {self.version}"


def load_price_table(config: Mapping[str, Any] | None = None) -> PriceTable:
    """The packaged price table with the config file's ``prices`` and ``machine_usd_per_hour`` applied."""
    shipped = yaml.safe_load((resources.files("tuneloop") / "prices.yaml").read_text(encoding="utf-8"))
    prices = {name: Price(**entry) for name, entry in shipped["models"].items()}
    config = read_config_file() if config is None else config
    source = get_settings().config_file
    overrides = config.get("prices") or {}
    if not isinstance(overrides, dict):
        raise TuneloopError("must be a mapping of model: {input, output, cached_input}", where=f"{source}: prices")
    for name, entry in overrides.items():
        where = f"{source}: prices.{name}"
        if not isinstance(entry, dict):
            raise TuneloopError("must be a mapping {input, output, cached_input} in USD per 1M tokens", where=where)
        try:
            prices[str(name)] = Price.model_validate(entry)
        except ValidationError as exc:
            raise config_entry_error(exc, where, "input, output, cached_input (USD per 1M tokens)") from None
    rate, rate_source = shipped["machine_usd_per_hour"], f"price table {shipped['version']} default"
    if config.get("machine_usd_per_hour") is not None:
        rate, rate_source = config["machine_usd_per_hour"], "config.yaml"
        if isinstance(rate, bool) or not isinstance(rate, int | float) or rate < 0:
            raise TuneloopError(
                f"must be a number of US dollars >= 0, got {rate!r}", where=f"{source}: machine_usd_per_hour"
            )
    version = str(shipped["version"]) + ("+config" if overrides else "")
    return PriceTable(version, prices, float(rate), rate_source, frozenset(str(name) for name in overrides))


@dataclass(frozen=True)
class CostBasis:
    """How one model's requests are costed, with the words a report shows for it."""

    kind: Literal["tokens", "machine", "unknown"]
    description: str
    price: Price | None = None
    usd_per_hour: float | None = None

    def request_cost(
        self,
        *,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        cached_tokens: int | None = None,
        machine_seconds: float | None = None,
    ) -> float | None:
        """The request's cost in USD; None when what it depends on was not reported."""
        if self.kind == "tokens" and self.price is not None:
            if prompt_tokens is None or completion_tokens is None:
                return None  # the endpoint reported no usage
            return self.price.request_cost(prompt_tokens, completion_tokens, cached_tokens or 0)
        if self.kind == "machine" and self.usd_per_hour is not None and machine_seconds is not None:
            return self.usd_per_hour / 3600 * machine_seconds
        return None


def token_cost_basis(key: str, price: Price, table: PriceTable) -> CostBasis:
    return CostBasis("tokens", f"{key}: {price.describe()} ({table.source_of(key)})", price=price)


def machine_cost_basis(table: PriceTable) -> CostBasis:
    return CostBasis(
        "machine",
        f"self-hosted: ${table.machine_usd_per_hour:g}/hour machine time ({table.machine_rate_source})",
        usd_per_hour=table.machine_usd_per_hour,
    )


UNKNOWN_COST = CostBasis("unknown", "no price: add it under `prices:` in config.yaml")

_VOLUME = re.compile(r"^\s*([0-9][0-9_,.]*)\s*([kmb]?)\s*/\s*(s|sec|second|min|minute|h|hour|day|month)\s*$", re.I)
_PER_DAY = {"s": 86400, "sec": 86400, "second": 86400, "min": 1440, "minute": 1440, "h": 24, "hour": 24}
_MULTIPLIER = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9}


def parse_volume(text: str) -> float:
    """Requests per day from ``16000000/day``, ``16M/day``, ``200/s``, ``5k/hour``, ``1.2M/month``."""
    match = _VOLUME.match(text)
    if not match:
        raise TuneloopError(
            f"{text!r} is not a request volume", where="--volume", hint="write e.g. 16000000/day, 16M/day or 200/s"
        )
    number, multiplier, unit = match.groups()
    try:
        count = float(number.replace("_", "").replace(",", "")) * _MULTIPLIER[multiplier.lower()]
    except ValueError:
        raise TuneloopError(f"{number!r} is not a number", where="--volume") from None
    unit = unit.lower()
    if unit == "day":
        return count
    if unit == "month":
        return count / DAYS_PER_MONTH
    return count * _PER_DAY[unit]


def monthly_cost(cost_per_1k_usd: float, requests_per_day: float) -> float:
    return cost_per_1k_usd * requests_per_day / 1000 * DAYS_PER_MONTH

"""The measures of an eval other than field scoring: the interval, latency, cost, prices, the verdict."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tuneloop.cost import Price, load_price_table, monthly_cost, parse_volume
from tuneloop.errors import TuneloopError
from tuneloop.evals.candidates import ModelSpec, resolve_candidate
from tuneloop.evals.latency import decode_speed, latency_stats, percentile
from tuneloop.evals.scoring import clustered_wilson_interval
from tuneloop.evals.verdict import judge
from tuneloop.task import Requirements
from tuneloop.upstreams import load_upstreams

# --- the confidence interval ---------------------------------------------------------------------


def test_interval_is_plain_wilson_when_each_record_has_one_field() -> None:
    # 10 errors in 100: Wilson's 95 % score interval is [0.0552, 0.1744] (textbook value).
    low, high = clustered_wilson_interval([1] * 10 + [0] * 90, 1)
    assert low == pytest.approx(0.0552, abs=5e-4)
    assert high == pytest.approx(0.1744, abs=5e-4)


def test_interval_counts_between_the_records_and_the_fields() -> None:
    # 10 % of 600 fields wrong in both. Spread one per record, the fields are (at least) independent
    # evidence: the interval is that of 600 single-field records, never narrower.
    spread = clustered_wilson_interval([1] * 60 + [0] * 40, 6)
    assert spread == pytest.approx(clustered_wilson_interval([1] * 60 + [0] * 540, 1))
    # All six wrong together in 10 records: no more evidence than 100 records, never less.
    clustered = clustered_wilson_interval([6] * 10 + [0] * 90, 6)
    assert clustered == pytest.approx(clustered_wilson_interval([1] * 10 + [0] * 90, 1))
    every_field_wrong = clustered_wilson_interval([6] * 100, 6)
    assert every_field_wrong[1] == pytest.approx(1.0) and 0.9 < every_field_wrong[0] < 1.0


# --- latency -------------------------------------------------------------------------------------


def test_percentiles_interpolate_like_numpy() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([1, 2, 3, 4], 95) == pytest.approx(3.85)
    assert percentile([4, 1, 3, 2], 0) == 1 and percentile([4, 1, 3, 2], 100) == 4
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)


@dataclass
class Timed:
    latency_ms: float | None
    ttft_ms: float | None
    completion_tokens: int | None


def test_latency_stats_and_decode_speed() -> None:
    requests = [Timed(1000, 200, 9), Timed(2000, 400, 17), Timed(None, None, None)]
    stats = latency_stats(requests)
    assert stats is not None and stats.requests == 2
    assert stats.p50_ms == 1500 and stats.ttft_p50_ms == 300
    # (8 + 16) tokens after the first, over (0.8 + 1.6) s of decoding
    assert stats.output_tokens_per_s == pytest.approx(10.0)
    # without a time to first token (not streamed) every token counts over the whole latency
    assert decode_speed([Timed(2000, None, 10)]) == pytest.approx(5.0)
    assert latency_stats([Timed(None, None, None)]) is None


# --- cost ----------------------------------------------------------------------------------------


def test_token_cost_with_cached_prompt_tokens() -> None:
    price = Price(input=2.50, output=10.00, cached_input=1.25)
    # 1000 prompt tokens of which 400 cached, 200 out: (600*2.5 + 400*1.25 + 200*10) / 1e6
    assert price.request_cost(1000, 200, 400) == pytest.approx(0.004)
    assert Price(input=1, output=2).request_cost(1000, 0, 1000) == pytest.approx(0.001)  # no cache discount


def test_price_lookup_by_upstream_model_and_dated_snapshot() -> None:
    table = load_price_table({})
    assert table.lookup("gpt-4o-mini-2024-07-18", "openai")[0] == "gpt-4o-mini"
    assert table.lookup("gpt-4o-2024-05-13")[1].input == 5.0  # a snapshot priced apart from its family
    assert table.lookup("claude-sonnet-4-20250514")[0] == "claude-sonnet-4"
    assert table.lookup("my-own-model") is None
    assert table.version and table.machine_usd_per_hour > 0


def test_config_overrides_prices_and_machine_rate() -> None:
    config = {"prices": {"together/llama-70b": {"input": 0.88, "output": 0.88}}, "machine_usd_per_hour": 2.5}
    table = load_price_table(config)
    key, price = table.lookup("llama-70b", "together")
    assert key == "together/llama-70b" and price.output == 0.88
    assert table.machine_usd_per_hour == 2.5 and table.machine_rate_source == "config.yaml"
    assert table.version.endswith("+config")


@pytest.mark.parametrize(
    ("config", "where"),
    [
        ({"prices": {"m": {"input": 1, "outptu": 2}}}, "prices.m.outptu"),
        ({"prices": {"m": {"input": -1, "output": 2}}}, "prices.m.input"),
        ({"prices": ["m"]}, "prices"),
        ({"machine_usd_per_hour": "cheap"}, "machine_usd_per_hour"),
    ],
)
def test_bad_price_config_names_the_key(config: dict, where: str) -> None:
    with pytest.raises(TuneloopError) as caught:
        load_price_table(config)
    assert caught.value.where is not None and caught.value.where.endswith(where)


@pytest.mark.parametrize(
    ("text", "per_day"),
    [("16000000/day", 16e6), ("16M/day", 16e6), ("16,000,000 / day", 16e6), ("200/s", 200 * 86400), ("5k/hour", 120e3)],
)
def test_volumes(text: str, per_day: float) -> None:
    assert parse_volume(text) == pytest.approx(per_day)


def test_a_volume_without_a_unit_is_refused() -> None:
    with pytest.raises(TuneloopError, match="not a request volume"):
        parse_volume("16000000")


def test_monthly_cost_is_thirty_days_of_the_volume() -> None:
    assert monthly_cost(0.50, 16_000_000) == pytest.approx(0.50 * 16_000 * 30)


# --- models: how each kind is costed and identified ----------------------------------------------


def test_model_kinds_get_their_cost_basis(tuneloop_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    table = load_price_table({})
    api = resolve_candidate(ModelSpec("openai/gpt-4o-mini"), table)
    assert api.kind == "endpoint" and api.cost.kind == "tokens" and "gpt-4o-mini" in api.cost.description
    url = resolve_candidate(ModelSpec("http://127.0.0.1:9/v1#mine"), table)
    assert url.cost.kind == "machine" and url.identity == "http://127.0.0.1:9/v1#mine"
    local = resolve_candidate(ModelSpec("smollm2-135m-instruct"), table)
    assert local.kind == "local" and local.cost.kind == "machine" and local.one_at_a_time
    assert local.label == "smollm2-135m-instruct" and local.identity.endswith("|llamacpp")
    reference = resolve_candidate(ModelSpec("smollm2-135m-instruct", backend="transformers"), table)
    assert reference.label == "smollm2-135m-instruct [transformers]" and reference.identity != local.identity


def test_an_api_model_without_its_key_is_refused_before_running(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(TuneloopError, match="OPENAI_API_KEY is not set"):
        resolve_candidate(ModelSpec("openai/gpt-4o-mini"), load_price_table({}))


def test_an_unknown_version_is_refused_naming_it() -> None:
    with pytest.raises(TuneloopError) as caught:
        resolve_candidate(ModelSpec("liability-extraction@3"), load_price_table({}))
    assert caught.value.where == "model liability-extraction@3"


def test_upstreams_from_the_config_file(tuneloop_home: Path) -> None:
    (tuneloop_home / "config.yaml").write_text(
        "upstreams:\n  local: {base_url: 'http://127.0.0.1:8000/v1/', self_hosted: true}\n"
    )
    upstreams = load_upstreams()
    assert upstreams["local"].base_url == "http://127.0.0.1:8000/v1" and upstreams["local"].self_hosted
    assert upstreams["openai"].api_key_env == "OPENAI_API_KEY"  # the built-in stays
    (tuneloop_home / "config.yaml").write_text("upstreams:\n  local: {url: 'http://x'}\n")
    with pytest.raises(TuneloopError) as caught:
        load_upstreams()
    assert caught.value.where is not None and caught.value.where.endswith("upstreams.local.url")
    (tuneloop_home / "config.yaml").write_text("upstreams:\n  local: {base_url: [\n")
    with pytest.raises(TuneloopError, match="not valid YAML") as caught:
        load_upstreams()
    assert caught.value.where is not None and caught.value.where.endswith("config.yaml:3")


# --- the verdict ---------------------------------------------------------------------------------

DEMO_REQUIREMENTS = Requirements(max_error_rate=0.09, max_p95_latency_ms=200, max_cost_per_1k_requests_usd=0.50)


def test_the_seeds_table() -> None:
    # GPT-4: 11 % error, ~1 s; o3-mini: 4 %, ~5 s and costlier; neither meets all three.
    gpt4 = judge(DEMO_REQUIREMENTS, field_error_rate=0.11, p95_latency_ms=1000, cost_per_1k_usd=3.0)
    o3_mini = judge(DEMO_REQUIREMENTS, field_error_rate=0.04, p95_latency_ms=5000, cost_per_1k_usd=4.0)
    small = judge(DEMO_REQUIREMENTS, field_error_rate=0.06, p95_latency_ms=150, cost_per_1k_usd=0.02)
    assert gpt4.checks == {
        "max_error_rate": False,
        "max_p95_latency_ms": False,
        "max_cost_per_1k_requests_usd": False,
    }
    assert o3_mini.checks["max_error_rate"] and not o3_mini.meets_all and not gpt4.meets_all
    assert small.meets_all and small.to_dict()["meets_all"] is True


def test_a_requirement_met_exactly_passes_and_an_unmeasured_one_is_not_a_pass() -> None:
    at_ceiling = judge(DEMO_REQUIREMENTS, field_error_rate=0.09, p95_latency_ms=200, cost_per_1k_usd=0.50)
    assert at_ceiling.meets_all
    no_price = judge(DEMO_REQUIREMENTS, field_error_rate=0.01, p95_latency_ms=10, cost_per_1k_usd=None)
    assert no_price.checks["max_cost_per_1k_requests_usd"] is None and not no_price.meets_all


def test_saved_predictions_are_judged_on_error_only() -> None:
    verdict = judge(DEMO_REQUIREMENTS, field_error_rate=0.05, error_only=True)
    assert verdict.to_dict() == {"max_error_rate": True, "meets_all": True}
    only_latency = judge(Requirements(max_p95_latency_ms=100), field_error_rate=0.5, p95_latency_ms=99)
    assert only_latency.to_dict() == {"max_p95_latency_ms": True, "meets_all": True}

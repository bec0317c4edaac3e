"""Replica pools: an upstream with several base URLs, balanced, health-checked and ejected by the gateway.

Unit level: the real gateway (in a thread) over fake upstreams on loopback (the tests are about our side of
the wire). The proof: two ``tuneloop serve`` processes on the bundled model behind the gateway, one killed
with SIGKILL under concurrent load from the official ``openai`` client; every call is still answered.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from test_capture_support import free_port, gateway_config, rows, wait_for_rows
from tuneloop.capture.replicas import COLD, HOT, LOADING, WARM, ReplicaPool, affinity_from_listing
from tuneloop.capture.server import RunningGateway, running_gateway
from tuneloop.errors import TuneloopError
from tuneloop.testing.fake_upstream import FakeUpstream
from tuneloop.upstreams import Upstream

MESSAGES = [{"role": "user", "content": "Payoff is $1,200.00."}]


def pool_of(*urls: str, **settings: Any) -> ReplicaPool:
    return ReplicaPool(Upstream(name="pool", base_urls=urls, **settings))


def client(gateway: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0, timeout=30)


def health(gateway: RunningGateway) -> dict[str, Any]:
    return httpx.get(gateway.base_url.replace("/v1", "/healthz"), timeout=5).json()


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what or condition}")
        time.sleep(0.05)


def pooled_gateway(tmp_path: Path, urls: list[str], **settings: Any) -> Any:
    """A gateway whose upstream ``pool`` lists ``urls`` as replicas (``settings``: its pool settings)."""
    sections = {"upstreams": {"pool": {"base_urls": urls, "timeout_s": 5, **settings}}}
    config = gateway_config(tmp_path, urls[0], **sections)
    return running_gateway(config)


# --- config ---------------------------------------------------------------------------------------


def test_base_urls_make_a_pool_and_mistakes_name_their_key(tmp_path: Path) -> None:
    upstreams = {"p": {"base_urls": ["http://a/v1/", "http://b/v1"]}, "one": {"base_url": "http://c/v1"}}
    config = gateway_config(tmp_path, "http://127.0.0.1:9/v1", upstreams=upstreams)
    upstream = config.upstreams["p"]
    assert upstream.base_urls == ("http://a/v1", "http://b/v1")
    assert upstream.base_url == "http://a/v1"  # what evals and relabelling call: the first
    assert config.upstreams["one"].base_urls == ("http://c/v1",)  # base_url: a pool of one

    for entry, key, message in [
        ({"base_urls": ["http://a/v1", "ftp://b"]}, "upstreams.p.base_urls", "item 1: 'ftp://b' is not an http(s) URL"),
        ({"base_urls": "http://a/v1"}, "upstreams.p.base_urls", "one URL goes under base_url"),
        ({"base_urls": ["http://a/v1", "http://a/v1/"]}, "upstreams.p.base_urls", "listed twice"),
        ({"base_url": "http://a/v1", "base_urls": ["http://b/v1"]}, "upstreams.p", "not both"),
        ({"base_url": ["http://a/v1"]}, "upstreams.p", "list several replicas under base_urls"),
        (
            {"base_urls": ["http://a/v1"], "eject_after_failures": 0},
            "upstreams.p.eject_after_failures",
            "greater than or equal to 1",
        ),
    ]:
        with pytest.raises(TuneloopError) as caught:
            gateway_config(tmp_path, "http://127.0.0.1:9/v1", upstreams={"p": entry})
        assert caught.value.where is not None and caught.value.where.endswith(key), caught.value
        assert message in caught.value.message


# --- the choice of a replica ----------------------------------------------------------------------


def test_least_outstanding_wins_and_ties_are_broken_at_random() -> None:
    pool = pool_of("http://a/v1", "http://b/v1", "http://c/v1")
    a, b, c = pool.replicas
    a.outstanding, b.outstanding, c.outstanding = 3, 1, 2
    assert pool.pick("m") is b
    c.outstanding = 1
    random.seed(1)
    assert {pool.pick("m") for _ in range(50)} == {b, c}
    # A call that failed on b goes to another replica (c, the least loaded of the rest), then to a.
    assert pool.pick("m", tried=[b]) is c
    assert pool.pick("m", tried=[b, c]) is a


def test_affinity_is_preferred_within_a_margin_of_load() -> None:
    pool = pool_of("http://a/v1", "http://b/v1", affinity_margin=2)
    a, b = pool.replicas
    a.affinity = {"task@prod": HOT}
    b.affinity = {"task@prod": WARM}
    a.outstanding, b.outstanding = 2, 0
    assert pool.pick("task@prod") is a  # 2 more in flight: within the margin, the hot one keeps its calls
    a.outstanding = 3
    assert pool.pick("task@prod") is b  # past the margin: the load goes elsewhere
    assert pool.pick("other") is b  # no replica has it: least outstanding


def test_listings_of_tuneloop_serve_and_vllm_give_affinity() -> None:
    serve_listing = {  # the shape of tuneloop serve's /v1/models (serve/served_models.py)
        "object": "list",
        "data": [
            {"id": "smollm2-135m-instruct", "object": "model", "state": "hot"},
            {"id": "t@1", "state": "warm", "aliases": [], "root": "t@sha256:aa"},
            {"id": "t@2", "state": "hot", "aliases": ["t@prod"], "root": "t@sha256:bb"},
            {"id": "other-base", "state": "loading"},
            {"id": "cold-base", "state": "cold"},
        ],
    }
    levels = affinity_from_listing(serve_listing)
    assert levels["t@prod"] == levels["t@2"] == levels["t@sha256:bb"] == HOT
    assert (levels["t@1"], levels["other-base"], levels["cold-base"]) == (WARM, LOADING, COLD)
    vllm_listing = {"data": [{"id": "base", "root": "/models/base"}, {"id": "t@2", "parent": "base", "root": "/x"}]}
    assert affinity_from_listing(vllm_listing) == {"base": HOT, "t@2": HOT}  # listed: loaded
    with pytest.raises(ValueError, match="not a model listing"):
        affinity_from_listing({"models": []})


# --- through the gateway --------------------------------------------------------------------------


@pytest.fixture
def two_fakes() -> Iterator[tuple[FakeUpstream, str, FakeUpstream, str]]:
    first, second = FakeUpstream(), FakeUpstream()
    with first.running() as first_url, second.running() as second_url:
        yield first, first_url, second, second_url


def test_calls_go_to_the_replica_with_the_fewest_in_flight(tmp_path: Path) -> None:
    """A slow replica keeps its few calls in flight; the fast one takes the rest (round robin would split
    them evenly and make half the calls wait for the slow one)."""
    slow, fast = FakeUpstream(latency_ms=300), FakeUpstream()
    with ExitStack() as stack:
        slow_url, fast_url = stack.enter_context(slow.running()), stack.enter_context(fast.running())
        gw = stack.enter_context(pooled_gateway(tmp_path, [slow_url, fast_url], affinity_margin=0))
        openai_client = client(gw)
        deadline = time.monotonic() + 1.5

        def worker(_: int) -> int:
            count = 0
            while time.monotonic() < deadline:
                openai_client.chat.completions.create(model="pool/m", messages=MESSAGES)
                count += 1
            return count

        with ThreadPoolExecutor(6) as pool:
            total = sum(pool.map(worker, range(6)))
    assert total == slow.served["ok"] + fast.served["ok"]
    print(f"\nslow replica: {slow.served['ok']} calls, fast replica: {fast.served['ok']}")
    assert fast.served["ok"] > 4 * slow.served["ok"] > 0, (fast.served, slow.served)


def test_a_failing_replica_is_ejected_and_its_calls_go_elsewhere(
    tmp_path: Path, two_fakes: tuple[FakeUpstream, str, FakeUpstream, str]
) -> None:
    bad, bad_url, good, good_url = two_fakes
    bad.fault_rate, bad.faults = 1.0, ("503",)
    with pooled_gateway(tmp_path, [bad_url, good_url], eject_after_failures=2, eject_for_s=60) as gw:
        openai_client = client(gw)
        calls = 0
        # Each call names another model (no replica has it loaded), so the two replicas are equal choices.
        while calls < 10 or replica_state(gw, bad_url)["state"] == "up":
            completion = openai_client.chat.completions.create(model=f"pool/m{calls}", messages=MESSAGES)
            assert completion.choices[0].message.content == good.answer
            calls += 1
            assert calls < 60, "the failing replica was never ejected"
        for _ in range(10):  # ejected: no call tries it any more
            openai_client.chat.completions.create(model=f"pool/m{calls}", messages=MESSAGES)
            calls += 1
        assert bad.served["503"] == 2  # two failed tries in a row, then none
        state = replica_state(gw, bad_url)
        assert state["state"] == "ejected" and state["ejections"] == 1 and "503" in state["last_error"]
        assert replica_state(gw, good_url) | {"hot_models": []} == {
            "url": good_url,
            "state": "up",
            "outstanding": 0,
            "consecutive_failures": 0,
            "ejections": 0,
            "last_error": None,
            "hot_models": [],
        }
        metrics = httpx.get(gw.base_url.replace("/v1", "/metrics")).text
        assert f'tuneloop_gateway_replica_up{{replica="{bad_url}",upstream="pool"}} 0.0' in metrics
        assert f'tuneloop_gateway_replica_up{{replica="{good_url}",upstream="pool"}} 1.0' in metrics
        assert f'tuneloop_gateway_replica_ejections_total{{replica="{bad_url}",upstream="pool"}} 1.0' in metrics
    assert wait_for_rows(calls) == calls
    tried = [[(attempt["replica"], attempt["outcome"]) for attempt in row.attempts] for row in rows()]
    # A try on the failing replica moved on to the other at once; every try names its replica.
    assert tried.count([(bad_url, "http_503"), (good_url, "ok")]) == 2
    assert tried.count([(good_url, "ok")]) == calls - 2


def test_a_stopped_replica_is_ejected_then_readmitted_when_it_answers_again(tmp_path: Path) -> None:
    first, second = FakeUpstream(), FakeUpstream()
    port = free_port()
    # No retries: a refused connection moves to another replica without spending one.
    settings = {"eject_after_failures": 1, "eject_for_s": 0.2, "health_check_s": 0.5, "max_retries": 0}
    with ExitStack() as stack:
        first_running = first.running(port=port)
        first_url = first_running.__enter__()
        second_url = stack.enter_context(second.running())
        gw = stack.enter_context(pooled_gateway(tmp_path, [first_url, second_url], **settings))
        openai_client = client(gw)

        def ask(count: int) -> None:
            for number in range(count):
                completion = openai_client.chat.completions.create(model=f"pool/m{number}", messages=MESSAGES)
                assert completion.choices[0].message.content == first.answer

        ask(6)
        first_running.__exit__(None, None, None)  # stopped: its port refuses connections
        ask(10)
        assert replica_state(gw, first_url)["state"] == "ejected"
        served = first.served["ok"]
        first_running = first.running(port=port)
        first_running.__enter__()
        stack.callback(first_running.__exit__, None, None, None)
        wait_until(lambda: replica_state(gw, first_url)["state"] == "up", what="the replica to be re-admitted")
        ask(12)
        assert first.served["ok"] > served  # back in the pool, it takes calls again


def test_a_stream_cut_before_its_first_byte_moves_to_another_replica(
    tmp_path: Path, two_fakes: tuple[FakeUpstream, str, FakeUpstream, str]
) -> None:
    bad, bad_url, good, good_url = two_fakes
    bad.fault_rate, bad.faults = 1.0, ("cut-head",)  # the head of a 200 stream, then the connection closes
    with pooled_gateway(tmp_path, [bad_url, good_url], eject_after_failures=100, max_retries=0) as gw:
        calls = 0
        while bad.served["cut-head"] < 2:
            stream = client(gw).chat.completions.create(model=f"pool/m{calls}", messages=MESSAGES, stream=True)
            assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices) == good.answer
            calls += 1
            assert calls < 60, "the cut replica was never tried"
    assert wait_for_rows(calls) == calls
    tried = [[(attempt["replica"], attempt["outcome"]) for attempt in row.attempts] for row in rows()]
    assert tried.count([(bad_url, "connection_error"), (good_url, "ok")]) == 2
    assert all(row.status == "ok" and row.ttft_ms is not None for row in rows())  # streamed, whole


def test_a_model_goes_to_the_replica_that_lists_it_loaded(tmp_path: Path) -> None:
    first, second = FakeUpstream(models=("task@1",)), FakeUpstream(models=("other",))
    with ExitStack() as stack:
        first_url, second_url = stack.enter_context(first.running()), stack.enter_context(second.running())
        gw = stack.enter_context(pooled_gateway(tmp_path, [first_url, second_url]))
        wait_until(
            lambda: (
                "task@1" in replica_state(gw, first_url)["hot_models"]
                and "other" in replica_state(gw, second_url)["hot_models"]
            ),
            what="the first health checks",
        )
        openai_client = client(gw)
        for model in ["task@1"] * 8 + ["other"] * 8:
            openai_client.chat.completions.create(model=f"pool/{model}", messages=MESSAGES)
    assert (first.served["ok"], second.served["ok"]) == (8, 8)


def test_one_base_url_is_no_pool(tmp_path: Path, two_fakes: tuple[FakeUpstream, str, FakeUpstream, str]) -> None:
    fake_url = two_fakes[1]
    with running_gateway(gateway_config(tmp_path, fake_url)) as gw:
        client(gw).chat.completions.create(model="fake/m", messages=MESSAGES)
        assert health(gw)["replicas"] == {}
        assert "tuneloop_gateway_replica_up" not in httpx.get(gw.base_url.replace("/v1", "/metrics")).text
    assert wait_for_rows(1) == 1
    assert "replica" not in rows()[0].attempts[0]  # the log rows of one-URL upstreams are as before


def replica_state(gateway: RunningGateway, url: str) -> dict[str, Any]:
    return next(state for state in health(gateway)["replicas"]["pool"] if state["url"] == url)


# --- the proof: real replicas, one killed under load ----------------------------------------------


class ServeProcess:
    """``tuneloop serve`` on the bundled base, in its own process (so it can be killed with SIGKILL)."""

    def __init__(self, home: Path) -> None:
        from tuneloop.bases import DEFAULT_BASE

        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        command = [str(Path(sys.executable).parent / "tuneloop"), "serve", "--port", str(self.port)]
        command += ["--auth", "disabled", "--models", DEFAULT_BASE, "--threads", "1", "--n-ctx", "512"]
        command += ["--max-queue", "64"]
        self.log = (home / f"serve-{self.port}.log").open("wb")
        env = {**os.environ, "TUNELOOP_HOME": str(home)}
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, Path(self.log.name).read_text(errors="replace")[-2000:]
            try:
                if httpx.get(self.base_url.removesuffix("/v1") + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        pytest.fail(f"tuneloop serve did not start: {Path(self.log.name).read_text(errors='replace')[-2000:]}")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.log.close()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_killing_a_serve_replica_under_load_loses_no_call(tmp_path: Path, tuneloop_home: Path) -> None:
    from tuneloop.bases import DEFAULT_BASE

    begun = time.monotonic()
    with ExitStack() as stack:
        replicas = [ServeProcess(tuneloop_home), ServeProcess(tuneloop_home)]
        for replica in replicas:
            stack.callback(replica.close)
        for replica in replicas:
            replica.wait_ready()
        print(f"\nreplicas up in {time.monotonic() - begun:.1f}s")
        # What the replicas list, as the pool reads it: the pinned base is hot on both.
        for replica in replicas:
            assert affinity_from_listing(httpx.get(replica.base_url + "/models").json())[DEFAULT_BASE] == HOT
        urls = [replica.base_url for replica in replicas]
        gw = stack.enter_context(pooled_gateway(tmp_path, urls, timeout_s=60))
        openai_client = openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0, timeout=60)
        total, workers = 36, 6
        done, answered, failures = [0], [], []
        lock = threading.Lock()
        victim = replicas[1]
        killed = threading.Event()

        def worker(index: int) -> None:
            while True:
                with lock:
                    if done[0] >= total:
                        return
                    done[0] += 1
                    number = done[0]
                try:
                    completion = openai_client.chat.completions.create(
                        model=f"pool/{DEFAULT_BASE}",
                        messages=[{"role": "user", "content": f"Say a number: {number}"}],
                        max_tokens=4,
                        temperature=0,
                    )
                    answered.append(completion.model)
                except openai.OpenAIError as exc:
                    failures.append(f"call {number}: {exc!r}")
                if number == total // 3 and not killed.is_set():
                    # Mid-run, with calls in flight on it: no shutdown code runs.
                    wait_until(lambda: victim_state()["outstanding"] > 0, timeout=10, what="calls in flight")
                    victim.process.send_signal(signal.SIGKILL)
                    victim.process.wait(10)
                    killed.set()

        def victim_state() -> dict[str, Any]:
            return next(s for s in gw.gateway.upstreams.replica_states()["pool"] if s["url"] == victim.base_url)

        started = time.monotonic()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(worker, range(workers)))
        elapsed = time.monotonic() - started
        assert killed.is_set()
        assert not failures, failures[:5]  # every call answered 200
        assert len(answered) == total and set(answered) == {DEFAULT_BASE}
        assert victim_state()["state"] == "ejected"
    assert wait_for_rows(total) == total
    tries = [attempt for row in rows() for attempt in row.attempts]
    # Calls were on the killed replica when it died, or sent to it before it was ejected: each moved on.
    moved = [attempt for attempt in tries if attempt["replica"] == victim.base_url and attempt["outcome"] != "ok"]
    assert moved and all(attempt["outcome"] == "connection_error" for attempt in moved), moved
    print(f"\n{total} calls at c={workers} in {elapsed:.1f}s; {len(moved)} tries on the killed replica moved on")
    assert all(row.status == "ok" and row.http_status == 200 for row in rows())

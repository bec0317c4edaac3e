"""The web UI: login and roles, CSRF, every page behind auth, the pages over the store, and the whole
review flow in a real headless Chromium (Debian's ``chromium``, driven by Playwright)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from conftest import running_in_ci
from tuneloop.store import RequestLog, session_scope
from tuneloop.store.keys import create_key, revoke_key
from tuneloop.ui import create_ui_app, mount_ui
from tuneloop.ui.app import PAGE_ROUTERS

TASK = "liability-extraction"
CHROMIUM = Path("/usr/bin/chromium")
SECRET = b"test-secret-for-ui-sessions"
TEXT = (
    "Payoff quote for loan ending 4821: $182,440.19 good through May 2. Escrow balance $2,310.55. "
    "Next payment due 2025-06-01 at 6.125%. Lakeview Loan Servicing."
)
DRAFT = {
    "payoff_amount": 182440.19,
    "escrow_balance": 2310.55,
    "next_due_date": "2025-06-01",
    "interest_rate": 6.125,
    "account_last4": "4821",
    "servicer": "Lakeview Loan",  # the model cut the name short: the reviewer fixes it
}


# --- the store's contents ----------------------------------------------------------------------------


def add_log(model: str, status: str = "ok", tags: list[str] | None = None, text: str = TEXT) -> int:
    from tuneloop.task import load_task

    messages = load_task(TASK).build_messages({"text": text})
    metadata = dict(tag.split("=", 1) for tag in tags or [] if "=" in tag)
    with session_scope() as session:
        row = RequestLog(
            task=metadata.get("task"),
            model_requested=model,
            model_resolved=model,
            upstream=model.split("/")[0],
            status=status,
            http_status=200 if status == "ok" else 502,
            error=None if status == "ok" else "upstream_unavailable",
            request={"model": model, "messages": messages},
            response={"choices": [{"message": {"role": "assistant", "content": json.dumps(DRAFT)}}]}
            if status == "ok"
            else None,
            latency_ms=123.0,
            tags=tags or [],
            metadata_=metadata,
        )
        session.add(row)
        session.flush()
        return row.id


def add_review_item(request_id: int, draft: dict[str, Any] = DRAFT) -> int:
    from tuneloop.review import create_item
    from tuneloop.task import load_task

    return create_item(
        task=TASK,
        request={"model": "local/x", "messages": load_task(TASK).build_messages({"text": TEXT})},
        draft_text=json.dumps(draft),
        draft_fields=draft,
        failed_checks=["servicer looks truncated"],
        model=f"{TASK}@1",
        request_id=request_id,
    )


def import_dataset(tmp_path: Path, name: str = "liab", n: int = 6) -> None:
    from tuneloop.data.datasets import import_jsonl
    from tuneloop.data.jsonl import write_rows
    from tuneloop.demo.synth import synthesize
    from tuneloop.task import load_task

    path = tmp_path / f"{name}.jsonl"
    write_rows(path, synthesize(load_task(TASK), n, seed=3, test_fraction=0.5))
    import_jsonl(path, name, task=TASK)


def register_versions(tmp_path: Path, count: int = 2) -> None:
    from test_serve import register_random_version

    for seed in range(1, count + 1):
        register_random_version(tmp_path, seed, layers=2)


def score_run(tmp_path: Path) -> int:
    """An eval run made the way `tuneloop eval score` makes one: saved predictions against gold rows."""
    from tuneloop.data.jsonl import write_rows
    from tuneloop.demo.synth import synthesize
    from tuneloop.evals.runner import score_predictions
    from tuneloop.task import load_task

    rows = synthesize(load_task(TASK), 8, seed=5, test_fraction=0.5)
    gold = tmp_path / "gold.jsonl"
    write_rows(gold, rows)
    predictions = tmp_path / "predictions.jsonl"
    write_rows(predictions, [{"id": row["id"], "output": row["messages"][-1]["content"]} for row in rows[:6]])
    report, _ = score_predictions(TASK, gold, predictions, model_name="saved-answers")
    return report.run_id


# --- HTTP helpers ----------------------------------------------------------------------------------


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "the page has no CSRF token"
    return match.group(1)


def login(client: TestClient, key: str, prefix: str = "") -> str:
    """Log in; returns the CSRF token of the new session."""
    token = csrf_of(client.get(f"{prefix}/login").text)
    response = client.post(f"{prefix}/login", data={"key": key, "csrf_token": token, "next": "/"})
    assert response.status_code == 303, response.text
    return csrf_of(client.get(f"{prefix}/").text)


@pytest.fixture
def keys() -> dict[str, str]:
    return {
        "admin": create_key("ana", role="admin").key,
        "reader": create_key("rudi", role="user").key,
    }


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(create_ui_app(SECRET), follow_redirects=False) as test_client:
        yield test_client


# --- auth ------------------------------------------------------------------------------------------


def _concrete(path: str) -> str:
    return (
        path.replace("{task}", TASK)
        .replace("{name}", "liab")
        .replace("{entry_id}", "1")
        .replace("{log_id}", "1")
        .replace("{run_id}", "1")
        .replace("{item_id}", "1")
    )


def test_every_page_and_action_requires_login(client: TestClient, keys: dict[str, str]) -> None:
    # Every route of every page router the app includes: a page added later is checked here too.
    routes = [route for router in PAGE_ROUTERS for route in router.routes if isinstance(route, APIRoute)]
    assert {"/", "/logs", "/datasets", "/evals", "/models", "/review", "/review/{item_id}/decide"} <= {
        route.path for route in routes
    }
    for route in routes:
        path = _concrete(route.path)
        for method in route.methods:
            if method == "GET":
                response = client.get(path)
                assert response.status_code == 303, (path, response.status_code)
                assert response.headers["location"].startswith("/login?next="), path
            else:
                # A CSRF token from the anonymous session: the refusal must be about the login, not the token.
                token = csrf_of(client.get("/login").text)
                response = client.request(method, path, data={"csrf_token": token})
                assert response.status_code == 401, (method, path, response.status_code)
    # The login page says where it will go back to.
    response = client.get("/logs?status=error")
    assert response.headers["location"] == "/login?next=%2Flogs%3Fstatus%3Derror"


def test_login_with_a_key_and_what_a_session_is_worth(client: TestClient, keys: dict[str, str]) -> None:
    token = csrf_of(client.get("/login").text)
    refused = client.post("/login", data={"key": "tl-not-a-key", "csrf_token": token})
    assert refused.status_code == 401 and "not an active tuneloop API key" in refused.text

    login(client, keys["admin"])
    home = client.get("/")
    assert home.status_code == 200 and "ana · admin" in home.text
    cookie = client.cookies.get("tuneloop_ui")
    assert cookie

    # A forged (edited) cookie is no session.
    payload, signature = cookie.rsplit(".", 1)
    for forged in (payload + "." + signature[::-1], payload[:-2] + "x" + payload[-1] + "." + signature):
        client.cookies.clear()
        client.cookies.set("tuneloop_ui", forged)
        assert client.get("/").status_code == 303
    client.cookies.clear()
    client.cookies.set("tuneloop_ui", cookie)
    assert client.get("/").status_code == 200

    # "next" only ever leads back into the UI.
    for target, lands in (("/models?x=1", "/models?x=1"), ("//evil.example", "/"), ("/\t/evil.example", "/")):
        token = csrf_of(client.get("/login").text)
        response = client.post("/login", data={"key": keys["admin"], "csrf_token": token, "next": target})
        assert response.headers["location"] == lands

    # Revoking the key ends its sessions on the next request.
    revoke_key("ana")
    response = client.get("/")
    assert response.status_code == 303 and response.headers["location"].startswith("/login")


def test_the_login_cookie_is_httponly_and_signed(keys: dict[str, str]) -> None:
    with TestClient(create_ui_app(SECRET), follow_redirects=False) as client:
        token = csrf_of(client.get("/login").text)
        response = client.post("/login", data={"key": keys["reader"], "csrf_token": token})
        cookie = response.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie
    # Another secret does not accept the cookie.
    with TestClient(create_ui_app(b"another-secret"), follow_redirects=False) as other:
        other.cookies.set("tuneloop_ui", response.cookies["tuneloop_ui"])
        assert other.get("/").status_code == 303


def test_form_posts_without_the_csrf_token_are_rejected(
    tmp_path: Path, client: TestClient, keys: dict[str, str]
) -> None:
    from tuneloop.registry.promotion import alias_history

    register_versions(tmp_path, 1)
    # Even the login form needs its token.
    assert client.post("/login", data={"key": keys["admin"]}).status_code == 403
    token = login(client, keys["admin"])
    for data in ({}, {"csrf_token": "forged"}):
        response = client.post(f"/models/{TASK}/promote", data={**data, "version": f"{TASK}@1", "alias": "prod"})
        assert response.status_code == 403, response.text
        assert "CSRF" in response.text
    assert client.post("/logout", data={}).status_code == 403
    assert alias_history(TASK) == []  # nothing moved
    # The same post with the token goes through.
    response = client.post(
        f"/models/{TASK}/promote", data={"csrf_token": token, "version": f"{TASK}@1", "alias": "prod"}
    )
    assert response.status_code == 303
    assert [move.to_version for move in alias_history(TASK)] == [f"{TASK}@1"]


def test_a_read_only_key_cannot_promote_roll_back_or_review(
    tmp_path: Path, client: TestClient, keys: dict[str, str]
) -> None:
    from tuneloop.registry.promotion import alias_history, promote
    from tuneloop.review import get_item

    register_versions(tmp_path, 2)
    promote(TASK, f"{TASK}@1", "prod", actor="setup")
    promote(TASK, f"{TASK}@2", "prod", actor="setup")
    item = add_review_item(add_log(f"local/{TASK}@2"))
    token = login(client, keys["reader"])

    page = client.get(f"/models/{TASK}")
    assert page.status_code == 200 and "read-only" in page.text and "Promote…" not in page.text
    assert client.get(f"/models/{TASK}/promote", params={"version": f"{TASK}@1"}).status_code == 403
    response = client.post(
        f"/models/{TASK}/promote", data={"csrf_token": token, "version": f"{TASK}@1", "alias": "prod"}
    )
    assert response.status_code == 403 and "admin key" in response.text
    response = client.post(f"/models/{TASK}/rollback", data={"csrf_token": token, "alias": "prod"})
    assert response.status_code == 403
    assert len(alias_history(TASK)) == 2  # still the two moves of the set-up

    # The review item can be read, but not locked or decided.
    page = client.get(f"/review/{item}")
    assert page.status_code == 200 and "Save correction" not in page.text
    for action in ("approve", "correct"):
        response = client.post(
            f"/review/{item}/decide", data={"csrf_token": token, "action": action, "field.servicer": "X"}
        )
        assert response.status_code == 403
    stored = get_item(item)
    assert stored.status == "pending" and stored.locked_by is None


# --- the pages -------------------------------------------------------------------------------------


def test_logs_filter_by_model_tag_and_status_and_show_one_call(client: TestClient, keys: dict[str, str]) -> None:
    api = add_log("openai/gpt-4o-mini", tags=["task=liability-extraction"])
    local = add_log(f"local/{TASK}@1", tags=["task=liability-extraction", "nightly"], text="Rocket Mortgage says hi")
    failed = add_log("openai/gpt-4o-mini", status="error")
    login(client, keys["reader"])

    def ids(**query: str) -> set[int]:
        page = client.get("/logs", params=query)
        assert page.status_code == 200
        return {int(found) for found in re.findall(r'href="/logs/(\d+)"', page.text)}

    assert ids() == {api, local, failed}
    assert ids(model="openai/*") == {api, failed}
    assert ids(model=f"local/{TASK}@1") == {local}
    assert ids(tag="nightly") == {local}
    assert ids(tag="task=liability-extraction") == {api, local}
    assert ids(status="error") == {failed}
    assert ids(status="ok", model="openai/*") == {api}
    assert "names no tag" in client.get("/logs", params={"tag": "=x"}).text

    page = client.get(f"/logs/{local}")
    assert page.status_code == 200
    assert "Rocket Mortgage says hi" in page.text  # the request JSON
    assert "Lakeview Loan" in page.text  # the response JSON
    assert "nightly" in page.text
    assert client.get("/logs/999999").status_code == 404


def test_dataset_pages_show_splits_provenance_and_entries(
    tmp_path: Path, client: TestClient, keys: dict[str, str]
) -> None:
    import_dataset(tmp_path, "liab", n=6)
    login(client, keys["reader"])
    listing = client.get("/datasets")
    assert listing.status_code == 200 and 'href="/datasets/liab"' in listing.text
    page = client.get("/datasets/liab")
    assert page.status_code == 200
    splits = page.text[page.text.index('id="splits"') : page.text.index("</table>", page.text.index('id="splits"'))]
    assert "train" in splits and "test" in splits and "upload" in splits
    entry_ids = re.findall(r'href="/datasets/liab/entries/(\d+)"', page.text)
    assert len(set(entry_ids)) == 6
    only_test = client.get("/datasets/liab", params={"split": "test"})
    assert 0 < len(set(re.findall(r'href="/datasets/liab/entries/(\d+)"', only_test.text))) < 6
    entry = client.get(f"/datasets/liab/entries/{entry_ids[0]}")
    assert entry.status_code == 200 and "provenance" in entry.text and "upload" in entry.text
    assert client.get("/datasets/nope").status_code == 404


def test_eval_run_pages_reuse_the_evals_report(tmp_path: Path, client: TestClient, keys: dict[str, str]) -> None:
    run_id = score_run(tmp_path)
    login(client, keys["reader"])
    listing = client.get("/evals")
    assert listing.status_code == 200 and f'href="/evals/{run_id}"' in listing.text
    page = client.get(f"/evals/{run_id}")
    assert page.status_code == 200 and f'src="/evals/{run_id}/report.html"' in page.text
    report = client.get(f"/evals/{run_id}/report.html")
    assert report.status_code == 200
    assert "Verdict" in report.text and "saved-answers" in report.text
    assert "data:image/png;base64," in report.text  # the plots the evals stage draws
    summary = client.get(f"/evals/{run_id}/report.json").json()
    assert summary["models"][0]["name"] == "saved-answers"
    assert client.get("/evals/4242").status_code == 404


def test_admin_promotes_and_rolls_back_after_confirming(
    tmp_path: Path, client: TestClient, keys: dict[str, str]
) -> None:
    from tuneloop.registry.promotion import alias_history
    from tuneloop.registry.versions import resolve_version

    register_versions(tmp_path, 2)
    token = login(client, keys["admin"])
    for version in (1, 2):
        confirm = client.get(f"/models/{TASK}/promote", params={"version": f"{TASK}@{version}", "alias": "prod"})
        assert confirm.status_code == 200 and f"{TASK}@{version}" in confirm.text
        assert len(alias_history(TASK)) == version - 1  # the confirmation page moves nothing
        done = client.post(
            f"/models/{TASK}/promote",
            data={
                "csrf_token": csrf_of(confirm.text),
                "version": f"{TASK}@{version}",
                "alias": "prod",
                "reason": "evals ok",
            },
        )
        assert done.status_code == 303
    assert resolve_version(f"{TASK}@prod", verify=False).id == f"{TASK}@2"

    confirm = client.get(f"/models/{TASK}/rollback", params={"alias": "prod"})
    assert f"{TASK}@2" in confirm.text and f"→ <strong>{TASK}@1</strong>" in confirm.text
    client.post(f"/models/{TASK}/rollback", data={"csrf_token": token, "alias": "prod"})
    assert resolve_version(f"{TASK}@prod", verify=False).id == f"{TASK}@1"

    page = client.get(f"/models/{TASK}")
    assert "rolled back" in page.text  # the flash message
    history = page.text[page.text.index('id="history"') :]
    assert history.count("<td>ana</td>") == 3 and "evals ok" in history and "rollback" in history
    # A move the registry refuses is reported, not a crash.
    client.post(f"/models/{TASK}/promote", data={"csrf_token": token, "version": f"{TASK}@9", "alias": "prod"})
    assert "no such version" in client.get(f"/models/{TASK}").text


def test_review_item_locks_and_a_correction_becomes_a_human_entry(client: TestClient, keys: dict[str, str]) -> None:
    from tuneloop.data.datasets import training_entries
    from tuneloop.review import get_item

    log_id = add_log(f"local/{TASK}@1")
    item = add_review_item(log_id)
    token = login(client, keys["admin"])
    queue = client.get("/review")
    assert f'href="/review/{item}"' in queue.text
    page = client.get(f"/review/{item}")
    assert page.status_code == 200 and 'name="field.servicer" value="Lakeview Loan"' in page.text
    assert get_item(item).locked_by is None  # opening it changed nothing
    taken = client.post(f"/review/{item}/lock", data={"csrf_token": token})
    assert taken.status_code == 303 and get_item(item).locked_by == "ana"

    response = client.post(
        f"/review/{item}/decide",
        data={
            "csrf_token": token,
            "action": "correct",
            **{f"field.{name}": str(value) for name, value in DRAFT.items()},
            "field.servicer": "Lakeview Loan Servicing",
            "field.interest_rate": "6.125%",  # typed differently: parsed to the same value
        },
    )
    assert response.status_code == 303
    decided = get_item(item)
    assert decided.status == "corrected" and decided.reviewer == "ana"
    assert decided.correction == {**DRAFT, "servicer": "Lakeview Loan Servicing"}
    entries = training_entries(f"{TASK}-reviewed")
    assert [(e.provenance, e.fields["servicer"], e.source_request_id) for e in entries] == [
        ("human", "Lakeview Loan Servicing", log_id)
    ]


def test_the_ui_mounts_inside_another_app(keys: dict[str, str]) -> None:
    outer = FastAPI()
    mount_ui(outer, "/ui", secret=SECRET)
    with TestClient(outer, follow_redirects=False) as client:
        response = client.get("/ui/logs")
        assert response.status_code == 303 and response.headers["location"] == "/ui/login?next=%2Flogs"
        login(client, keys["admin"], prefix="/ui")
        home = client.get("/ui/")
        assert home.status_code == 200 and 'href="/ui/logs"' in home.text and 'href="/ui/static/ui.css"' in home.text
        assert client.get("/ui/static/ui.css").status_code == 200


def test_the_gateway_serves_the_ui_when_its_config_says_so(keys: dict[str, str]) -> None:
    from tuneloop.capture.config import load_gateway_config
    from tuneloop.capture.server import gateway_app

    with_ui = TestClient(gateway_app(load_gateway_config(sections={"ui": True})), follow_redirects=False)
    assert with_ui.get("/ui/login").status_code == 200
    assert with_ui.get("/ui/models").headers["location"] == "/ui/login?next=%2Fmodels"
    without = TestClient(gateway_app(load_gateway_config()), follow_redirects=False)
    assert without.get("/ui/login").status_code == 404


# --- the browser -----------------------------------------------------------------------------------


def test_review_flow_in_headless_chromium(tmp_path: Path, keys: dict[str, str]) -> None:
    """Log in, browse logs, datasets and versions, correct a review item's field, approve another, and find
    the correction in the dataset page: all by keyboard and clicks in a real browser."""
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: install Debian's chromium (`sudo bash .ci/chromium.sh`)"
        if running_in_ci():
            pytest.fail(f"CI is set, so the browser test must run: {message}")
        pytest.skip(message)
    from playwright.sync_api import expect, sync_playwright

    from tuneloop.ui.server import running_ui

    register_versions(tmp_path, 1)
    import_dataset(tmp_path, "liab", n=4)
    first_log = add_log(f"local/{TASK}@1", tags=["task=liability-extraction"])
    second_log = add_log(f"local/{TASK}@1", tags=["task=liability-extraction"], text="Other servicer text")
    first = add_review_item(first_log)
    second = add_review_item(second_log, {**DRAFT, "servicer": "Mr. Cooper"})

    with running_ui(secret=SECRET) as ui, sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(20_000)
            page.goto(f"{ui.base_url}/logs")
            expect(page).to_have_url(re.compile(r"/login\?next="))
            page.fill("#key", keys["admin"])
            page.keyboard.press("Enter")
            expect(page).to_have_url(f"{ui.base_url}/logs")  # back where the login started
            expect(page.locator(".flash")).to_contain_text("Logged in as ana (admin)")

            page.click(f'a[href="/logs/{first_log}"]')
            expect(page.locator("#request-json")).to_contain_text("Payoff quote for loan ending 4821")

            page.click("nav >> text=Datasets")
            page.click('a[href="/datasets/liab"]')
            expect(page.locator("#splits")).to_contain_text("upload")

            page.click("nav >> text=Models")
            page.click(f'a[href="/models/{TASK}"]')
            expect(page.locator("#versions")).to_contain_text(f"{TASK}@1")

            page.click("nav >> text=Review")
            page.click(f'a[href="/review/{first}"]')
            page.click("#take-lock")  # opening an item only shows it; reviewing it takes its lock
            servicer = page.locator("#field-servicer")
            expect(servicer).to_have_value("Lakeview Loan")
            # The first field has the focus; Enter walks down the fields without submitting.
            expect(page.locator("#field-payoff_amount")).to_be_focused()
            for _ in range(5):
                page.keyboard.press("Enter")
            expect(servicer).to_be_focused()
            page.keyboard.press("Control+a")
            page.keyboard.type("Lakeview Loan Servicing")
            expect(page.locator("tr.changed")).to_have_count(1)
            page.keyboard.press("Control+Enter")  # save the correction
            expect(page.locator(".flash")).to_contain_text(f"Item {first} corrected → dataset {TASK}-reviewed")

            # Saving moved on to the next item in the queue: approve its draft as it is.
            expect(page).to_have_url(f"{ui.base_url}/review/{second}")
            expect(page.locator("#field-servicer")).to_have_value("Mr. Cooper")
            page.click("#approve")
            expect(page.locator(".flash")).to_contain_text(f"Item {second} approved")

            page.click("nav >> text=Datasets")
            page.click(f'a[href="/datasets/{TASK}-reviewed"]')
            entries = page.locator("#entries")
            expect(entries).to_contain_text("Lakeview Loan Servicing")
            expect(entries).to_contain_text("Mr. Cooper")
            expect(entries.locator("tr.provenance-human")).to_have_count(2)
            expect(entries).not_to_contain_text('"Lakeview Loan"')
        finally:
            browser.close()


def test_the_models_page_shows_a_running_canary_with_its_figures_and_stops_it(
    tmp_path: Path, client: TestClient, keys: dict[str, str]
) -> None:
    from tuneloop.registry.promotion import alias_history, promote
    from tuneloop.registry.rollouts import get_rollout, record_figures, start_canary

    register_versions(tmp_path, 2)
    promote(TASK, f"{TASK}@1", "prod")
    canary = start_canary(f"{TASK}@2", "prod", 5, actor="ana")
    arm = {"calls": 120, "error_rate": 0.0, "check_failure_rate": 0.025, "p95_ms": 840.0}
    record_figures(canary.id, {"kind": "canary", "arms": {"production": arm, "candidate": {**arm, "calls": 7}}})
    token = login(client, keys["admin"])
    overview = client.get("/models")
    assert "canary" in overview.text and "candidate: 7 calls" in overview.text
    page = client.get(f"/models/{TASK}")
    rollouts = page.text[page.text.index('id="rollouts"') : page.text.index('id="versions"')]
    assert f"{TASK}@2" in rollouts and "production: 120 calls" in rollouts and "p95 840 ms" in rollouts
    assert "Stop canary" in rollouts
    stopped = client.post(
        f"/models/{TASK}/rollouts/stop", data={"csrf_token": token, "alias": "prod", "kind": "canary"}
    )
    assert stopped.status_code == 303 and get_rollout(canary.id).state == "stopped"
    page = client.get(f"/models/{TASK}")
    assert "stopped the canary" in page.text and "None running" in page.text
    assert [move.kind for move in alias_history(TASK)] == ["move", "canary_start", "canary_stopped"]
    assert alias_history(TASK)[-1].actor == "ana"
    # Stopping what is not running is a message, not a crash; a read-only key cannot stop anything.
    again = client.post(f"/models/{TASK}/rollouts/stop", data={"csrf_token": token, "alias": "prod", "kind": "canary"})
    assert again.status_code == 303 and "has no canary running" in client.get(f"/models/{TASK}").text

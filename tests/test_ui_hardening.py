"""The web UI against hostile input: any cookie or form token it did not issue is "not logged in" (a redirect
to the login page or a 403), never a 500; and looking at a review item (a GET) changes nothing: its lock is
taken by an explicit POST (or, in the editor's flow, by the POST of the previous decision)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from test_ui import DRAFT, SECRET, TASK, add_log, add_review_item, csrf_of, login
from tuneloop.review import get_item
from tuneloop.store.keys import create_key
from tuneloop.ui import create_ui_app


@pytest.fixture
def ui() -> Iterator[TestClient]:
    # Server errors come back as the 500 a browser would get, so the assertions below can see them.
    with TestClient(create_ui_app(SECRET), follow_redirects=False, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def keys() -> dict[str, str]:
    return {
        "admin": create_key("ana", role="admin").key,
        "other_admin": create_key("olga", role="admin").key,
        "reader": create_key("rudi", role="user").key,
    }


MALFORMED_COOKIES = [
    "é.é".encode(),
    b"\xff\xfe.\xff",
    "payload.signatureé".encode(),
    ("é" * 2000).encode() + b"." + b"x" * 10,
    b"...",
    b".",
    b"abc.",
    b"!!!!.????",
    b"e30.AAAA",  # base64 of {} with a wrong signature
    b"\x00.\x00",
]


@pytest.mark.parametrize("cookie", MALFORMED_COOKIES, ids=range(len(MALFORMED_COOKIES)))
def test_a_malformed_session_cookie_is_not_logged_in(ui: TestClient, keys: dict[str, str], cookie: bytes) -> None:
    headers = {"cookie": b"tuneloop_ui=" + cookie}
    home = ui.get("/", headers=headers)
    assert home.status_code == 303 and home.headers["location"].startswith("/login"), home.text
    page = ui.get("/login", headers=headers)
    assert page.status_code == 200
    # The login form still works, with the fresh session's token.
    token = csrf_of(page.text)
    logged_in = ui.post("/login", data={"key": keys["admin"], "csrf_token": token, "next": "/"}, headers=headers)
    assert logged_in.status_code in (303, 403), logged_in.text  # 403: the token belonged to the cookie it replaced


@pytest.mark.parametrize("token", ["é" * 32, "\u202e", "\U0001f600", "x" * 5000])
def test_a_non_ascii_csrf_token_is_a_403_not_a_500(ui: TestClient, keys: dict[str, str], token: str) -> None:
    login(ui, keys["admin"])
    response = ui.post("/logout", data={"csrf_token": token})
    assert response.status_code == 403 and "CSRF" in response.text


def test_opening_a_review_item_does_not_lock_it(ui: TestClient, keys: dict[str, str]) -> None:
    first = add_review_item(add_log(f"local/{TASK}@1"))
    second = add_review_item(add_log(f"local/{TASK}@1"), {**DRAFT, "servicer": "Mr. Cooper"})

    token = login(ui, keys["admin"])
    for _ in range(2):
        page = ui.get(f"/review/{first}")
        assert page.status_code == 200
        assert get_item(first).locked_by is None  # looking is not taking
        assert 'id="take-lock"' in page.text and 'id="save-correction"' not in page.text
    assert ui.head(f"/review/{first}").status_code in (200, 405) and get_item(first).locked_by is None

    # The lock is an explicit POST, with the session's CSRF token.
    assert ui.post(f"/review/{first}/lock", data={"csrf_token": "forged"}).status_code == 403
    assert ui.get(f"/review/{first}/lock").status_code == 405
    assert get_item(first).locked_by is None
    taken = ui.post(f"/review/{first}/lock", data={"csrf_token": token})
    assert taken.status_code == 303 and get_item(first).locked_by == "ana"
    editor = ui.get(f"/review/{first}")
    assert 'id="save-correction"' in editor.text and 'id="take-lock"' not in editor.text

    # Another admin sees who holds it, and no way to take it.
    with TestClient(create_ui_app(SECRET), follow_redirects=False) as other:
        login(other, keys["other_admin"])
        seen = other.get(f"/review/{first}")
        assert "locked by &#39;ana&#39;" in seen.text and 'id="take-lock"' not in seen.text
        assert get_item(first).locked_by == "ana"
    # A read-only key sees items without locking them.
    with TestClient(create_ui_app(SECRET), follow_redirects=False) as reader:
        login(reader, keys["reader"])
        assert reader.get(f"/review/{second}").status_code == 200
        assert get_item(second).locked_by is None

    # The editor's flow: deciding one item (a POST) locks the next for the reviewer, and moves to it.
    decided = ui.post(
        f"/review/{first}/decide",
        data={"csrf_token": token, "action": "approve", **{f"field.{name}": str(v) for name, v in DRAFT.items()}},
    )
    assert decided.status_code == 303 and decided.headers["location"] == f"/review/{second}"
    assert get_item(first).status == "approved" and get_item(second).locked_by == "ana"
    assert 'id="save-correction"' in ui.get(f"/review/{second}").text

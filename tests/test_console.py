"""The console end to end: a real gateway, Debian's Chromium through Playwright, the OpenAI SDK using the keys the
console hands out. Every page must render with no script error and no request leaving the machine; screenshots of
each are written to test-artifacts/console/."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from playwright.sync_api import Browser, expect

from tests.support.browser import Watched, browser, watched_page
from tests.support.processes import Process, start_gateway
from tests.test_keys import ADMIN_KEY, keyed_gateway
from tests.test_metrics import WORKER_CONFIG, counted_by_each_worker
from tests.test_reload import wait_for
from tests.test_workers import wait_for_workers

__all__ = ["browser"]  # the fixture, used by name
USER = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def gateway(upstream: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    process = keyed_gateway(upstream, tmp_path_factory.mktemp("console"))
    yield process
    process.stop()


@pytest.fixture
def page(browser: Browser) -> Iterator[Watched]:
    watched = watched_page(browser)
    yield watched
    watched.page.context.close()


def sign_in(watched: Watched, gateway: Process, key: str = ADMIN_KEY, *, here: bool = False) -> None:
    page = watched.page
    if not here:
        page.goto(gateway.url + "/ui/login")
    page.get_by_label("Admin key").fill(key)
    page.get_by_role("button", name="Sign in").click()


def sdk(gateway: Process, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=secret, max_retries=0, timeout=20)


def test_pages_need_a_session_and_a_wrong_key_is_refused(page: Watched, gateway: Process) -> None:
    page.page.goto(gateway.url + "/ui/keys")
    expect(page.page).to_have_url(re.compile(r"/ui/login\?next=%2Fui%2Fkeys$"))
    sign_in(page, gateway, "not-the-admin-key", here=True)
    expect(page.page.get_by_role("alert")).to_have_text("Wrong admin key.")
    page.page.get_by_label("Admin key").fill(ADMIN_KEY)
    page.page.get_by_role("button", name="Sign in").click()
    expect(page.page).to_have_url(gateway.url + "/ui/keys")  # where it was going
    cookie = next(c for c in page.page.context.cookies() if c["name"] == "gw_console")
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (True, "Strict", "/ui")
    assert ADMIN_KEY not in cookie["value"]
    page.page.get_by_role("button", name="Sign out").click()
    expect(page.page).to_have_url(re.compile(r"/ui/login$"))
    page.page.goto(gateway.url + "/ui")
    expect(page.page).to_have_url(re.compile(r"/ui/login"))
    page.check()


def test_a_key_made_in_the_console_serves_the_sdk_until_rotated_and_revoked(page: Watched, gateway: Process) -> None:
    sign_in(page, gateway)
    browser_page = page.page
    browser_page.get_by_role("navigation").get_by_role("link", name="Keys").click()
    browser_page.get_by_role("link", name="Create key").click()
    browser_page.get_by_label("Name").fill("console-made")
    browser_page.get_by_label("Models").fill("test-chat")
    browser_page.get_by_label("Requests per minute").fill("1000")
    browser_page.get_by_role("button", name="Create key").click()
    expect(browser_page.get_by_role("heading", level=1)).to_have_text("Key created: console-made")
    secret = browser_page.get_by_label("Secret").input_value()
    assert secret.startswith("sk-gw-")
    page.screenshot("key-created")

    with sdk(gateway, secret) as client:
        answer = client.chat.completions.create(model="test-chat", messages=USER)
        assert answer.choices[0].message.content
        with pytest.raises(openai.PermissionDeniedError):  # the models the form allowed, and no other
            client.chat.completions.create(model="demo", messages=USER)

    browser_page.get_by_role("navigation").get_by_role("link", name="Keys").click()
    created = browser_page.get_by_role("row", name=re.compile(r"^console-made ")).locator("time")
    expect(created).not_to_contain_text("UTC")  # written again in the viewer's time zone (Paris, here)
    assert (created.get_attribute("datetime") or "").endswith("+00:00")
    browser_page.get_by_role("link", name="console-made").click()
    # Accounting is written in the background: the page shows the request once it is stored.
    served = browser_page.get_by_role("row", name=re.compile(r"^test-chat 1 "))
    for _ in range(50):
        if served.count():
            break
        browser_page.wait_for_timeout(100)
        browser_page.reload()
    expect(served).to_be_visible()
    page.screenshot("key")
    browser_page.get_by_role("navigation").get_by_role("link", name="Overview").click()
    expect(browser_page.get_by_role("row", name=re.compile(r"^test-chat [1-9]"))).to_be_visible()  # the last 24 h
    expect(browser_page.locator(".chart rect").first).to_be_attached()
    browser_page.go_back()

    browser_page.get_by_label("Old secret keeps working for (seconds)").fill("0")
    browser_page.get_by_role("button", name="Rotate").click()
    expect(browser_page.get_by_role("heading", level=1)).to_have_text("Key rotated: console-made")
    rotated = browser_page.get_by_label("Secret").input_value()
    assert rotated != secret
    with sdk(gateway, secret) as old, pytest.raises(openai.AuthenticationError):
        old.chat.completions.create(model="test-chat", messages=USER)
    with sdk(gateway, rotated) as new:
        assert new.chat.completions.create(model="test-chat", messages=USER).choices

    browser_page.get_by_role("link", name="Go to the key").click()
    browser_page.once("dialog", lambda dialog: dialog.accept())
    browser_page.get_by_role("button", name="Revoke").click()
    expect(browser_page.locator(".state")).to_have_text("revoked")
    with sdk(gateway, rotated) as revoked, pytest.raises(openai.AuthenticationError):
        revoked.chat.completions.create(model="test-chat", messages=USER)
    assert secret not in browser_page.content()  # the secret is shown once, never again
    page.check()


def test_a_post_without_the_forms_token_or_from_elsewhere_is_refused(page: Watched, gateway: Process) -> None:
    sign_in(page, gateway)
    request = page.page.context.request  # the browser's cookies, as a forged cross-site post would carry
    form = {"name": "forged"}
    no_token = request.post(gateway.url + "/ui/keys", form=form)
    assert no_token.status == 403
    token = page.page.locator("input[name=csrf]").first.get_attribute("value")
    assert token
    elsewhere = request.post(gateway.url + "/ui/keys", form={**form, "csrf": token},
                             headers={"origin": "https://evil.example"})  # fmt: skip
    assert elsewhere.status == 403
    made = request.post(gateway.url + "/ui/keys", form={**form, "csrf": token})
    assert made.status == 200  # the token from the page, from this origin: the form works
    listed = httpx.get(gateway.url + "/admin/keys", params={"name": "forged"},
                       headers={"authorization": f"Bearer {ADMIN_KEY}"}).json()  # fmt: skip
    assert listed["total"] == 1


PAGES = [("/ui", "Overview"), ("/ui/keys", "Keys"), ("/ui/keys/new", "Create key"), ("/ui/agents", "Agents"),
         ("/ui/usage", "Usage"), ("/ui/sessions", "Sessions")]  # fmt: skip


@pytest.mark.parametrize(("path", "heading"), PAGES)
def test_every_page_renders_safely_on_a_laptop_and_a_phone(
    browser: Browser, gateway: Process, path: str, heading: str
) -> None:
    for width, height, device in ((1280, 900, "laptop"), (390, 844, "phone")):
        watched = watched_page(browser, width=width, height=height)
        try:
            sign_in(watched, gateway)
            response = watched.page.goto(gateway.url + path)
            assert response is not None
            assert response.status == 200
            headers = response.headers
            assert "frame-ancestors 'none'" in headers["content-security-policy"]
            assert "script-src 'self'" in headers["content-security-policy"]
            assert headers["cache-control"] == "no-store"
            expect(watched.page.get_by_role("heading", level=1)).to_have_text(heading)
            assert ADMIN_KEY not in watched.page.content()
            name = path.removeprefix("/ui").strip("/").replace("/", "-") or "overview"
            watched.screenshot(f"{name}-{device}")
            watched.check()
        finally:
            watched.page.context.close()


def test_agents_show_their_circuits_and_a_refused_reload_says_what_is_wrong(page: Watched, gateway: Process) -> None:
    # Five failures open a circuit (the agent's breaker defaults): test-dead's upstream refuses connections.
    key = httpx.post(gateway.url + "/admin/keys", json={"name": "breaker"},
                     headers={"authorization": f"Bearer {ADMIN_KEY}"}).json()  # fmt: skip
    with sdk(gateway, key["secret"]) as client:
        for _ in range(5):
            with pytest.raises(openai.APIError):
                client.chat.completions.create(model="test-dead", messages=USER)
    sign_in(page, gateway)
    browser_page = page.page
    browser_page.goto(gateway.url + "/ui/agents")
    expect(browser_page.get_by_role("row", name=re.compile(r"^test-dead"))).to_contain_text("circuit open")
    expect(browser_page.get_by_role("row", name=re.compile(r"^demo"))).to_contain_text("circuit closed")
    expect(browser_page.get_by_role("row", name=re.compile(r"^test-chat"))).to_contain_text("circuit off")
    config = gateway.log_path.parent / "agents.yaml"
    good = config.read_text()
    config.write_text(good.replace("model: upstream-model", "model: upstream-model\n      colour: blue", 1))
    try:
        browser_page.get_by_role("button", name="Reload config").click()
        alert = browser_page.get_by_role("alert")
        expect(alert).to_contain_text("not reloaded")
        expect(alert).to_contain_text("agents.yaml")
        expect(alert).to_contain_text("colour")  # the file and the field
    finally:
        config.write_text(good)
    browser_page.get_by_role("button", name="Reload config").click()
    expect(browser_page.get_by_role("status")).to_contain_text("Config reloaded")
    expect(browser_page.get_by_role("row", name=re.compile(r"^test-chat"))).to_be_visible()
    page.check()


def test_usage_downloads_as_csv(page: Watched, gateway: Process) -> None:
    sign_in(page, gateway)
    page.page.goto(gateway.url + "/ui/usage")
    with page.page.expect_download() as download:
        page.page.get_by_role("link", name="Download CSV").click()
    lines = download.value.path().read_text().splitlines()
    assert lines[0] == "day,key_id,agent,requests,prompt_tokens,completion_tokens,cached_tokens,cost_usd,errors"
    assert all(len(line.split(",")) == 9 for line in lines)
    # test-chat has prices (tests/conftest.py): its rows carry what they cost.
    priced = [line.split(",") for line in lines[1:] if line.split(",")[2] == "test-chat"]
    assert priced
    assert all(float(row[7]) > 0 for row in priced)
    page.check()


def test_signing_in_works_from_the_keyboard(page: Watched, gateway: Process) -> None:
    browser_page = page.page
    browser_page.goto(gateway.url + "/ui/login")
    expect(browser_page.get_by_label("Admin key")).to_be_focused()  # ready to type into
    browser_page.keyboard.type(ADMIN_KEY)
    browser_page.keyboard.press("Enter")
    expect(browser_page.get_by_role("heading", level=1)).to_have_text("Overview")
    browser_page.keyboard.press("Tab")  # the first stop skips the navigation
    expect(browser_page.get_by_role("link", name="Skip to content")).to_be_focused()
    browser_page.keyboard.press("Tab")
    expect(browser_page.get_by_role("navigation").get_by_role("link", name="Overview")).to_be_focused()
    page.check()


def test_wrong_keys_from_one_address_are_stopped(upstream: Process, tmp_path_factory: pytest.TempPathFactory) -> None:
    gateway = keyed_gateway(upstream, tmp_path_factory.mktemp("console-guessed"))  # no wrong key counted yet
    with contextlib.closing(ProcessStopper(gateway)), httpx.Client(base_url=gateway.url, timeout=20) as http:
        form_page = http.get("/ui/login")
        token = re.search(r'name="csrf" value="([^"]+)"', form_page.text)
        assert token is not None
        statuses = [http.post("/ui/login", data={"admin_key": f"guess-{n}", "csrf": token.group(1)}).status_code
                    for n in range(6)]  # fmt: skip
        assert statuses == [401] * 5 + [429]
        # Stopped even with the right key, until the window passes: a guesser cannot tell when it hit.
        right = http.post("/ui/login", data={"admin_key": ADMIN_KEY, "csrf": token.group(1)})
        assert right.status_code == 429


class ProcessStopper:
    def __init__(self, process: Process) -> None:
        self.process = process

    def close(self) -> None:
        self.process.stop()


def test_a_sessions_messages_can_be_read_and_the_session_deleted(page: Watched, gateway: Process) -> None:
    key = httpx.post(gateway.url + "/admin/keys", json={"name": "chatty"},
                     headers={"authorization": f"Bearer {ADMIN_KEY}"}).json()  # fmt: skip
    auth = {"authorization": f"Bearer {key['secret']}"}
    session_id = httpx.post(gateway.url + "/v1/sessions", json={"model": "test-chat"}, headers=auth).json()[
        "session_id"
    ]
    with sdk(gateway, key["secret"]) as client:
        client.chat.completions.create(model="test-chat", messages=[{"role": "user", "content": "Remember <b>me</b>"}],
                                       extra_headers={"x-session-id": session_id})  # fmt: skip
    sign_in(page, gateway)
    browser_page = page.page
    browser_page.get_by_role("navigation").get_by_role("link", name="Sessions").click()
    browser_page.get_by_label("Key").select_option(label="chatty")
    browser_page.get_by_role("button", name="Show").click()
    browser_page.get_by_role("link", name=session_id).click()
    expect(browser_page.locator(".message.user")).to_contain_text("Remember <b>me</b>")  # shown as text, escaped
    expect(browser_page.locator(".message.assistant")).to_have_count(1)
    page.screenshot("session")
    browser_page.once("dialog", lambda dialog: dialog.accept())
    browser_page.get_by_role("button", name="Delete").click()
    expect(browser_page).to_have_url(re.compile(r"/ui/sessions$"))
    assert httpx.get(f"{gateway.url}/v1/sessions/{session_id}", headers=auth).status_code == 404
    page.check()


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"name": ""}, "name"),
        ({"name": "x", "rpm": "lots"}, "rpm"),
        ({"name": "x", "tpm": "-5"}, "tpm"),
        ({"name": "x", "metadata": "{not json"}, "metadata"),
        ({"name": "x", "metadata": "[1, 2]"}, "metadata"),
        ({"name": "x", "expires_in_days": "0"}, "expires_at"),
        ({"name": "x" * 500}, "name"),
    ],
)
def test_a_bad_key_form_is_answered_with_the_field_and_creates_nothing(
    page: Watched, gateway: Process, fields: dict[str, str], named: str
) -> None:
    sign_in(page, gateway)
    page.page.goto(gateway.url + "/ui/keys/new")
    token = page.page.locator("input[name=csrf]").first.get_attribute("value")
    assert token
    before = httpx.get(gateway.url + "/admin/keys", headers={"authorization": f"Bearer {ADMIN_KEY}"}).json()["total"]
    answer = page.page.context.request.post(gateway.url + "/ui/keys", form={**fields, "csrf": token})
    assert answer.status == 400
    assert named in answer.text()
    after = httpx.get(gateway.url + "/admin/keys", headers={"authorization": f"Bearer {ADMIN_KEY}"}).json()["total"]
    assert after == before


@pytest.mark.redis
def test_two_workers_on_redis_serve_one_console(page: Watched, redis_url: str, tmp_path: Path) -> None:
    """The session, the forms' tokens and what the pages show hold whichever worker a connection lands on."""
    config = tmp_path / "agents.yaml"
    config.write_text(WORKER_CONFIG)
    metrics = tmp_path / "prometheus"
    env = {"GATEWAY_WORKERS": "2", "GATEWAY_STORE": "redis", "REDIS_URL": redis_url, "GATEWAY_ADMIN_KEY": ADMIN_KEY,
           "GATEWAY_STATE_DIR": str(tmp_path / "state"), "PROMETHEUS_MULTIPROC_DIR": str(metrics)}  # fmt: skip
    gateway = start_gateway(config, tmp_path, env)
    try:
        wait_for_workers(gateway)
        sign_in(page, gateway)
        cookie = next(c["value"] for c in page.page.context.cookies() if c["name"] == "gw_console")
        page.page.goto(gateway.url + "/ui/keys/new")
        token = page.page.locator("input[name=csrf]").first.get_attribute("value")
        assert token
        names = [f"fleet-{n}" for n in range(12)]
        for name in names:  # a new connection each: the kernel spreads them over the workers
            with httpx.Client(base_url=gateway.url, cookies={"gw_console": cookie}) as fresh:
                assert fresh.post("/ui/keys", data={"name": name, "csrf": token}).status_code == 200
        for _ in range(12):
            with httpx.Client(base_url=gateway.url, cookies={"gw_console": cookie}) as fresh:
                listed = fresh.get("/ui/keys", params={"q": "fleet-"})
                assert listed.status_code == 200
                assert all(name in listed.text for name in names)
        wait_for(lambda: len([n for n in counted_by_each_worker(metrics, "/ui").values() if n]) == 2)
    finally:
        assert gateway.stop() == 0

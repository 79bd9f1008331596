"""Headless Chromium for the browser tests: Debian's `chromium` (CI installs it in .ci/run), driven by
Playwright from PyPI, never `playwright install`. Screenshots go to artifacts/ (ignored by git).

Test modules import `page`, `staff_roles` and `browser_marks` from here and sign staff in with `log_in`.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from django.db import connections
from django.urls import reverse

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"

browser_marks = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not (os.path.exists(CHROMIUM) or shutil.which("chromium")),
                       reason="Chromium is not installed (/usr/bin/chromium); apt-get install -y chromium"),
]


@pytest.fixture(autouse=True)
def staff_roles():
    """Transactional tests flush the groups the migration made: make them again."""
    from django.apps import apps

    from institutions.roles import sync_staff_roles

    sync_staff_roles(apps)


@pytest.fixture
def page(monkeypatch):
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls are synchronous.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium"), args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        yield page
        browser.close()
        # With that loop running, Django keeps the test's database connection in a context-local slot of its
        # own, which the test's teardown never sees: close it here, or it outlives the test database.
        connections.close_all()


def log_in(page, live_server, staff_user, role: str) -> None:
    """Sign in as staff do the first time: password, then set up the authenticator from the key shown, then its code."""
    import base64

    from django_otp.oath import totp

    user = staff_user(role)
    page.goto(live_server.url + reverse("admin:login"))
    page.fill("#id_username", user.username)
    page.fill("#id_password", "pw")
    page.click("input[type=submit]")
    page.wait_for_selector("#otp-qr svg")
    secret = page.inner_text("#otp-secret").replace(" ", "")
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    page.fill("#id_code", f"{totp(key):06d}")
    follow(page, "#second-factor-form input[type=submit]")
    assert page.locator("#second-factor-form .errorlist").count() == 0, page.inner_text("#second-factor-form .errorlist")
    assert page.locator("#backup-codes li").count() == 10
    page.click("#continue")
    page.wait_for_selector("#grade-sync-support")


def follow(page, selector: str) -> None:
    """Click what loads a new page and wait for it: a bare click returns before the next page is there, and a
    read straight after it (count(), page.url, the database) would see the old one."""
    with page.expect_navigation():
        page.click(selector)

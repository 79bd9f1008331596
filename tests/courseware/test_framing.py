"""Who may frame our pages, checked on real HTTP responses of launches from the sandbox LMS.

Each launch's pages name only the origins of that launch (its registration's issuer and auth URL,
the page that posted the launch, its return URL, the registration's extra origins); everything
else (admin, JWKS) is never framed; a refusal before the launch is verified may be framed by anyone.
"""
from __future__ import annotations

import os
import re
import shutil

import pytest
import requests
from django.core.exceptions import ValidationError
from django.urls import reverse

from courseware.framing import origin_of
from courseware.models import ActivityKind, Launch
from institutions.models import RegistrationProfile, validate_frame_origins
from sandbox_lms import api
from tests import lms
from tests.conftest import sign_in_verified
from tests.courseware_factories import ActivityFactory, QuestionFactory

pytestmark = pytest.mark.django_db(transaction=True)


def frame_ancestors(response: requests.Response) -> set[str]:
    policy = response.headers.get("Content-Security-Policy", "")
    match = re.search(r"(?:^|;\s*)frame-ancestors ([^;]*)", policy)
    assert match, f"no frame-ancestors in {policy!r} ({response.status_code} {response.url})"
    return set(match.group(1).split())


def posted_from(origin: str, *, user, resource_link=None, course=None, deep_linking=False) -> tuple[requests.Session, requests.Response]:
    """A launch as tests.lms.launch does it, the id_token posted from a page at `origin` (as a browser says in Origin)."""
    http = lms.browser()
    if deep_linking:
        initiation = api.start_deep_linking(user=user, course=course)
    else:
        initiation = api.start_launch(user=user, resource_link=resource_link, course=course)
    page = http.post(initiation.url, data=initiation.params, timeout=10)
    action, fields = api.parse_autopost(page.text)
    return http, http.post(action, data=fields, headers={"Origin": origin}, timeout=10)


@pytest.fixture
def quiz():
    activity = ActivityFactory(slug="framing-quiz", title="Framing quiz", kind=ActivityKind.CUSTOM_QUIZ)
    QuestionFactory(activity=activity)
    return activity


def _platform(live_server, institution, name: str, quiz) -> lms.Connected:
    """A registration whose issuer, return URL host and extra origin are its own (the auth URL is the sandbox's)."""
    connected = lms.connect(live_server.url, institution, profile="canvas")
    platform = connected.seeded.platform
    platform.issuer = f"https://canvas.{name}.example"
    platform.base_url = f"https://lms.{name}.example/sandbox-lms"  # launch_presentation.return_url's host
    platform.save(update_fields=["issuer", "base_url"])
    connected.registration.issuer = platform.issuer
    connected.registration.save(update_fields=["issuer"])
    RegistrationProfile.objects.filter(registration=connected.registration).update(frame_origins=f"https://vanity.{name}.example\n")
    link = connected.seeded.resource_link
    link.custom = {**link.custom, "activity_id": str(quiz.pk)}
    link.save(update_fields=["custom"])
    return connected


@pytest.fixture
def north(live_server, two_institutions, quiz):
    return _platform(live_server, two_institutions[0], "north", quiz)


@pytest.fixture
def south(live_server, two_institutions, quiz):
    return _platform(live_server, two_institutions[1], "south", quiz)


def own_origins(name: str, live_server) -> set[str]:
    return {
        f"https://canvas.{name}.example",  # issuer
        live_server.url,  # auth URL (the sandbox's, served here)
        f"https://{name}.instructure.example",  # the page that posted the launch
        f"https://lms.{name}.example",  # launch_presentation.return_url
        f"https://vanity.{name}.example",  # the registration's extra origins
    }


def test_each_launch_is_framed_only_by_its_own_registrations_origins(live_server, north, south):
    pages = {}
    for name, connected in (("north", north), ("south", south)):
        http, player = posted_from(f"https://{name}.instructure.example", user=connected.students[0], resource_link=connected.seeded.resource_link)
        assert player.status_code == 200 and "Framing quiz" in player.text, player.text[:500]
        pages[name] = (http, player)

    for name, other in (("north", "south"), ("south", "north")):
        http, player = pages[name]
        assert frame_ancestors(player) == own_origins(name, live_server)
        assert frame_ancestors(player.history[0]) == own_origins(name, live_server)  # the launch's own answer (a redirect)
        assert not frame_ancestors(player) & (own_origins(other, live_server) - {live_server.url})
        assert "X-Frame-Options" not in player.headers


def test_a_page_after_the_launch_carries_the_origins_remembered_with_it(live_server, north):
    http, player = posted_from("https://north.instructure.example", user=north.students[0], resource_link=north.seeded.resource_link)
    launch = Launch.objects.get()
    assert set(launch.frame_origins) == own_origins("north", live_server)
    # Changing the registration later does not change what this launch's session allows.
    RegistrationProfile.objects.filter(registration=north.registration).update(frame_origins="https://someone-else.example")

    start = re.search(r'action="([^"]+/start/)"', player.text).group(1)
    quiz_page = http.post(live_server.url + start, data={"csrfmiddlewaretoken": lms.csrf_token(player.text)}, timeout=10)

    assert quiz_page.status_code == 200 and 'name="q-' in quiz_page.text
    assert frame_ancestors(quiz_page) == own_origins("north", live_server)


def test_the_instructors_pages_are_framed_by_their_launch_only(live_server, north, south):
    http, player = posted_from("https://north.instructure.example", user=north.instructor, resource_link=north.seeded.resource_link)
    schedule = http.get(live_server.url + reverse("courseware:schedule"), timeout=10)
    assert (player.status_code, schedule.status_code) == (200, 200)
    assert frame_ancestors(player) == frame_ancestors(schedule) == own_origins("north", live_server)

    http, picker = posted_from("https://south.instructure.example", user=south.instructor, course=south.course, deep_linking=True)
    assert picker.url.endswith(reverse("lti-pick")) and picker.status_code == 200
    assert frame_ancestors(picker) == own_origins("south", live_server)
    course = Launch.objects.filter(role="instructor").latest("pk").course
    grade_sync = http.get(live_server.url + reverse("courseware:grade_sync", args=[course.pk]), timeout=10)
    assert grade_sync.status_code == 200
    assert frame_ancestors(grade_sync) == own_origins("south", live_server)


def test_an_origin_header_that_is_not_an_origin_is_left_out(live_server, north):
    _, player = posted_from("https://evil.example; script-src *", user=north.students[0], resource_link=north.seeded.resource_link)
    _, second = posted_from("null", user=north.students[1], resource_link=north.seeded.resource_link)

    expected = own_origins("north", live_server) - {"https://north.instructure.example"}
    assert frame_ancestors(player) == expected
    assert frame_ancestors(second) == expected
    assert "script-src *" not in player.headers["Content-Security-Policy"]


def test_the_admin_and_the_jwks_are_never_framed(live_server):
    for url in (reverse("admin:login"), reverse("lti-jwks")):
        response = requests.get(live_server.url + url, timeout=10)
        assert response.status_code == 200, url
        assert frame_ancestors(response) == {"'none'"}, url
        assert response.headers["X-Frame-Options"] == "DENY", url


def test_a_refusal_before_the_launch_is_verified_may_be_framed_by_any_lms(live_server, north):
    """It holds no form: it must be readable inside whichever LMS frame sent the request."""
    unverified = requests.post(live_server.url + reverse("lti-launch"), data={"id_token": "not-a-token", "state": "x"}, timeout=10)
    not_a_launch = requests.get(live_server.url + reverse("lti-launch"), timeout=10)

    assert 400 <= unverified.status_code < 500 and not_a_launch.status_code == 405
    assert frame_ancestors(unverified) == {"*"} and frame_ancestors(not_a_launch) == {"*"}
    assert "X-Frame-Options" not in unverified.headers
    assert "<form" not in unverified.text
    assert not Launch.objects.exists()


def test_a_player_page_without_a_launch_is_framed_by_this_site_only(client, staff_user, two_institutions, quiz):
    from tests.courseware_factories import ActivityLinkFactory
    from tests.factories import CourseFactory

    link = ActivityLinkFactory(course=CourseFactory(institution=two_institutions[0]), activity=quiz)
    play = reverse("courseware:play", kwargs={"link_id": link.pk})

    refused = client.get(play)  # no launch in this session (e.g. the LMS frame lost its cookies): a refusal
    sign_in_verified(client, staff_user(None, username="support-person"))
    preview = client.get(play)

    assert refused.status_code == 403 and refused.headers["Content-Security-Policy"].count("frame-ancestors *") == 1
    assert preview.status_code == 200 and "frame-ancestors 'self'" in preview.headers["Content-Security-Policy"]


def test_the_players_inline_script_runs_with_the_pages_nonce(client, launched, link_to, north_course):
    reading = ActivityFactory(slug="framing-reading", title="Framing reading", kind=ActivityKind.READING)
    link = link_to(reading)
    launched(north_course)

    page = client.get(reverse("courseware:play", kwargs={"link_id": link.pk}))

    nonce = re.search(r'<script nonce="([^"]+)">', page.content.decode()).group(1)
    script_src = re.search(r"script-src ([^;]*)", page.headers["Content-Security-Policy"]).group(1).split()
    assert f"'nonce-{nonce}'" in script_src  # browsers then ignore 'unsafe-inline' on this page


@pytest.mark.parametrize(
    "url, origin",
    [
        ("https://School.Instructure.com/courses/1?x=1", "https://school.instructure.com"),
        ("https://lms.example.edu:443/x", "https://lms.example.edu"),
        ("http://127.0.0.1:8000/sandbox-lms", "http://127.0.0.1:8000"),
        ("http://[::1]:8000/", "http://[::1]:8000"),
        ("javascript:alert(1)", None),
        ("https://evil.example; script-src *", None),
        ("https://evil.example:99999/", None),
        ("//no-scheme.example/", None),
        ("", None),
        (None, None),
    ],
)
def test_origin_of(url, origin):
    assert origin_of(url) == origin


def test_the_extra_origins_of_a_registration_are_origins_only():
    validate_frame_origins("https://lms.school.edu\nhttp://localhost:8000\n")
    for wrong in ("https://lms.school.edu/path", "https://a.edu; script-src *", "*", "'self'", "ftp://a.edu"):
        with pytest.raises(ValidationError):
            validate_frame_origins(wrong)


@pytest.mark.browser
@pytest.mark.skipif(not (os.path.exists("/usr/bin/chromium") or shutil.which("chromium")), reason="Chromium is not installed")
def test_the_players_presence_script_runs_in_chromium_under_the_policy(live_server, two_institutions, monkeypatch):
    """The nonce'd inline script of a reading pings the server; the browser reports no policy violation."""
    from playwright.sync_api import sync_playwright

    from courseware import services

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    monkeypatch.setattr(services, "PING_INTERVAL_SECONDS", 1)
    reading = ActivityFactory(slug="framing-browser-reading", title="Reading in Chromium", kind=ActivityKind.READING)
    connected = lms.connect(live_server.url, two_institutions[0], profile="canvas")
    link = connected.seeded.resource_link
    link.custom = {**link.custom, "activity_id": str(reading.pk)}
    link.save(update_fields=["custom"])
    initiation = api.start_launch(user=connected.students[0], resource_link=link)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else shutil.which("chromium"),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"],
        )
        page = browser.new_page()
        violations = []
        page.on("console", lambda message: violations.append(message.text) if "Content Security Policy" in message.text else None)
        with page.expect_response(lambda response: "/presence/" in response.url, timeout=20000) as pinged:
            page.goto(initiation.get_url)
        assert pinged.value.status == 200
        assert "Reading in Chromium" in page.content()
        browser.close()

    assert violations == []

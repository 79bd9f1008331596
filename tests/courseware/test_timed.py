"""Readings and videos: 1/1 after 60 s of continuous presence, measured by the server."""
from __future__ import annotations

from decimal import Decimal

import pytest
from django.urls import reverse

from courseware.models import ActivityKind, Attempt
from gradesync.models import Result
from tests.courseware_factories import ActivityFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def reading():
    return ActivityFactory(
        slug="reading-osi", title="The OSI model", kind=ActivityKind.READING,
        body="The OSI model has seven layers.\n\nEach layer serves the one above it.",
    )


def open_page(client, link):
    page = client.get(reverse("courseware:play", kwargs={"link_id": link.pk}))
    assert page.status_code == 200
    return page


def ping(client, link, attempt):
    response = client.post(reverse("courseware:presence", kwargs={"link_id": link.pk, "attempt_id": attempt.pk}))
    assert response.status_code == 200
    return response.json()


def stay(client, link, attempt, clock, *, seconds: int, every: int = 10):
    answer = None
    for _ in range(seconds // every):
        clock.advance(every)
        answer = ping(client, link, attempt)
    return answer


def test_a_reading_gives_full_credit_after_sixty_seconds_on_the_page(client, launched, link_to, north_course, reading, clock):
    link = link_to(reading)
    launched(north_course)
    page = open_page(client, link)
    assert "<p>The OSI model has seven layers.</p>" in page.content.decode()
    assert "Stay on this page for 60 seconds" in page.content.decode()
    attempt = page.context["attempt"]

    at_50 = stay(client, link, attempt, clock, seconds=50)
    assert (at_50["seconds"], at_50["completed"]) == (50, False)
    assert not Result.objects.exists()

    at_60 = stay(client, link, attempt, clock, seconds=10)

    assert at_60["completed"] is True
    attempt.refresh_from_db()
    assert attempt.score == Decimal("1") and attempt.completed_at == clock.now
    assert Result.objects.get().score == Decimal("1")
    assert "Full credit (1/1) was recorded" in open_page(client, link).content.decode()


def test_leaving_early_gives_no_credit_and_restarts_the_clock(client, launched, link_to, north_course, reading, clock):
    link = link_to(reading)
    launched(north_course)
    attempt = open_page(client, link).context["attempt"]
    stay(client, link, attempt, clock, seconds=40)

    clock.advance(300)  # left for five minutes, then came back to the tab
    back = ping(client, link, attempt)
    assert (back["seconds"], back["completed"]) == (0, False)
    after_50_more = stay(client, link, attempt, clock, seconds=50)

    assert after_50_more == {"seconds": 50, "required": 60, "completed": False}
    assert not Result.objects.exists()
    assert stay(client, link, attempt, clock, seconds=10)["completed"] is True
    assert Result.objects.get().score == Decimal("1")


def test_reopening_the_page_after_leaving_restarts_the_clock(client, launched, link_to, north_course, reading, clock):
    link = link_to(reading)
    launched(north_course)
    attempt = open_page(client, link).context["attempt"]
    stay(client, link, attempt, clock, seconds=50)

    clock.advance(3600)
    reopened = open_page(client, link)
    answer = stay(client, link, attempt, clock, seconds=20)

    assert reopened.context["attempt"] == attempt  # the same open attempt, its clock restarted
    assert (answer["seconds"], answer["completed"]) == (20, False)
    assert not Result.objects.exists()


def test_a_page_that_never_pings_gets_no_credit_however_long_ago_it_opened(client, launched, link_to, north_course, reading, clock):
    link = link_to(reading)
    launched(north_course)
    attempt = open_page(client, link).context["attempt"]

    clock.advance(600)
    answer = ping(client, link, attempt)

    assert (answer["seconds"], answer["completed"]) == (0, False)
    assert Attempt.objects.get().completed_at is None


def test_a_video_shows_its_transcript_and_credits_once(client, launched, link_to, north_course, clock):
    video = ActivityFactory(slug="video-subnets", title="Subnetting in 5 minutes", kind=ActivityKind.VIDEO,
                            video_url="", body="Hi, in this video we split a /24 into four /26 networks.")
    link = link_to(video)
    launched(north_course)
    page = open_page(client, link)
    assert "Transcript" in page.content.decode() and "four /26 networks" in page.content.decode()
    attempt = page.context["attempt"]
    stay(client, link, attempt, clock, seconds=60)

    again = open_page(client, link)
    clock.advance(10)
    late_ping = ping(client, link, attempt)

    assert again.context["attempt"] is None and "Completed on" in again.content.decode()
    assert late_ping["completed"] is True
    assert Attempt.objects.count() == 1 and Result.objects.count() == 1


def test_a_ping_for_someone_elses_attempt_is_not_found(client, launched, link_to, north_course, reading, clock):
    link = link_to(reading)
    launched(north_course)
    attempt = open_page(client, link).context["attempt"]
    launched(north_course)

    response = client.post(reverse("courseware:presence", kwargs={"link_id": link.pk, "attempt_id": attempt.pk}))

    assert response.status_code == 404


def test_the_ping_needs_the_csrf_token(launched, link_to, north_course, reading, clock):
    from django.test import Client

    browser = Client(enforce_csrf_checks=True)
    link = link_to(reading)
    launch = launched(north_course)
    session = browser.session
    session["courseware_launch_id"] = launch.pk
    session.save()
    page = browser.get(reverse("courseware:play", kwargs={"link_id": link.pk}))
    url = reverse("courseware:presence", kwargs={"link_id": link.pk, "attempt_id": page.context["attempt"].pk})

    assert browser.post(url).status_code == 403
    token = browser.cookies["csrftoken"].value
    assert browser.post(url, HTTP_X_CSRFTOKEN=token).status_code == 200

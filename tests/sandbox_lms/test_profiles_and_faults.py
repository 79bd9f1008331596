"""Moodle and Canvas refusals, and injected faults, as a tool meets them over HTTP."""
from __future__ import annotations

from datetime import timedelta

import pytest
import requests
from django.utils import timezone

from sandbox_lms import api

from .conftest import ServiceClient, now_iso

pytestmark = pytest.mark.django_db(transaction=True)

ATTEMPTS_BODY = {"errors": {"type": "unprocessable_entity",
                            "message": "The maximum number of allowed attempts has been reached for this submission"}}


# --- Moodle ---------------------------------------------------------------------------------------

def test_moodle_refuses_a_second_score_in_the_same_second_with_409(make_sandbox):
    seeded = make_sandbox(api.Profile.MOODLE)
    service = ServiceClient(seeded)
    student = seeded.students[0]

    first = service.post_score(student, scoreGiven=5, timestamp="2031-03-01T10:00:00.100000+00:00")
    same_second = service.post_score(student, scoreGiven=6, timestamp="2031-03-01T10:00:00.900000+00:00")
    next_second = service.post_score(student, scoreGiven=7, timestamp="2031-03-01T10:00:01.000000+00:00")

    assert first.status_code == 200
    assert same_second.status_code == 409 and same_second.reason.startswith("Refusing score with an earlier timestamp for item ")
    assert next_second.status_code == 200
    assert api.grades(line_item=seeded.line_item)[student.sub].result == pytest.approx(70.0)


def test_moodle_answers_incorrect_score_received_for_a_user_who_cannot_be_graded(make_sandbox):
    seeded = make_sandbox(api.Profile.MOODLE)

    response = ServiceClient(seeded).post_score(seeded.instructor)

    assert response.status_code == 400 and response.reason == "Incorrect score received"


def test_moodle_line_item_urls_carry_type_id_and_its_token_is_text_html(make_sandbox):
    seeded = make_sandbox(api.Profile.MOODLE)
    service = ServiceClient(seeded)

    token = service.request_token()
    claims = api.follow_launch(requests.Session(), api.start_launch(
        user=seeded.students[0], resource_link=seeded.resource_link)).json()["launch"]
    without_query = service.call("POST", seeded.line_item_url.split("?")[0] + "/scores", json={},
                                 headers={"Content-Type": api.SCORE_MEDIA_TYPE})

    assert token.headers["Content-Type"].startswith("text/html") and token.json()["token_type"] == "Bearer"
    lineitem = claims["https://purl.imsglobal.org/spec/lti-ags/claim/endpoint"]["lineitem"]
    assert lineitem.endswith(f"/lineitem?type_id={seeded.registration.pk}")
    assert without_query.status_code == 400


# --- Canvas ---------------------------------------------------------------------------------------

def test_canvas_refuses_an_earlier_timestamp_with_its_message_but_takes_an_equal_one(make_sandbox):
    seeded = make_sandbox(api.Profile.CANVAS)
    service = ServiceClient(seeded)
    student = seeded.students[0]
    stamp = "2031-03-01T10:00:00.500000+00:00"

    assert service.post_score(student, timestamp=stamp).status_code == 200
    equal = service.post_score(student, scoreGiven=9, timestamp=stamp)
    earlier = service.post_score(student, timestamp="2031-03-01T09:59:59.000000+00:00")

    assert equal.status_code == 200
    assert earlier.status_code == 400
    assert earlier.json()["errors"][0]["message"] == (
        "Provided timestamp of 2031-03-01T09:59:59.000000+00:00 before last updated timestamp of 2031-03-01T10:00:00.500Z"
    )


def test_canvas_allowed_attempts_unless_the_score_is_not_a_new_submission(make_sandbox):
    seeded = make_sandbox(api.Profile.CANVAS)
    seeded.line_item.allowed_attempts = 2
    seeded.line_item.save()
    service = ServiceClient(seeded)
    student = seeded.students[0]

    statuses = [service.post_score(student, timestamp=now_iso(n)).status_code for n in range(2)]
    third = service.post_score(student, timestamp=now_iso(3))
    regrade = service.post_score(student, scoreGiven=10, timestamp=now_iso(4),
                                 **{"https://canvas.instructure.com/lti/submission": {"new_submission": False}})

    assert statuses == [200, 200]
    assert third.status_code == 422 and third.json() == ATTEMPTS_BODY
    assert regrade.status_code == 200
    assert api.grades(line_item=seeded.line_item)[student.sub].result == pytest.approx(100.0)


def test_canvas_throttles_with_403_and_rate_limit_headers(make_sandbox):
    seeded = make_sandbox(api.Profile.CANVAS)
    api.configure_registration(registration=seeded.registration, rate_limit_capacity=3, rate_limit_leak_per_second=0)
    service = ServiceClient(seeded)
    token = service.token  # the token endpoint counts too

    answers = [service.post_score(seeded.students[0], timestamp=now_iso(n)) for n in range(3)]

    assert token and [a.status_code for a in answers] == [200, 200, 403]
    assert answers[1].headers["X-Rate-Limit-Remaining"] == "0.0"
    assert answers[2].text == "403 Forbidden (Rate Limit Exceeded)"
    assert "X-Rate-Limit-Remaining" in answers[2].headers


def test_canvas_refuses_a_course_moved_to_another_deployment(make_sandbox):
    seeded = make_sandbox(api.Profile.CANVAS)
    service = ServiceClient(seeded)
    service._token = service.request_token(
        assertion=service.assertion(**{"https://purl.imsglobal.org/spec/lti/claim/deployment_id": seeded.deployment.deployment_id})
    ).json()["access_token"]
    assert service.post_score(seeded.students[0], timestamp=now_iso()).status_code == 200
    sub_account = api.add_deployment(registration=seeded.registration, name="Other sub-account")

    api.move_course(course=seeded.course, deployment=sub_account)
    moved = service.post_score(seeded.students[0], timestamp=now_iso(1))
    initiation = api.start_launch(user=seeded.students[0], resource_link=seeded.resource_link)

    assert moved.status_code == 401
    assert moved.json()["errors"][0]["message"] == "Access Token not linked to a Tool associated with this Context"
    assert initiation.params["lti_deployment_id"] == sub_account.deployment_id


def test_canvas_refuses_a_user_who_is_not_a_student(make_sandbox):
    seeded = make_sandbox(api.Profile.CANVAS)
    tester = api.create_user(platform=seeded.platform, name="Test Student")
    api.enrol(course=seeded.course, user=tester, role=api.Role.TEST_USER)
    service = ServiceClient(seeded)

    teacher = service.post_score(seeded.instructor)
    student_view = service.post_score(tester)

    assert teacher.status_code == 422
    assert teacher.json()["errors"][0]["message"] == "User not found in course or is not a student"
    assert student_view.status_code == 200


# --- Faults ---------------------------------------------------------------------------------------

def test_fault_5xx(sandbox):
    service = ServiceClient(sandbox)
    service.token
    api.set_faults(registration=sandbox.registration, error_rate=1.0, error_status=502)

    assert service.post_score(sandbox.students[0]).status_code == 502
    assert api.grades(line_item=sandbox.line_item) == {}


def test_fault_429_with_retry_after(sandbox):
    service = ServiceClient(sandbox)
    service.token
    api.set_faults(registration=sandbox.registration, throttle_rate=1.0, retry_after=7)

    response = service.post_score(sandbox.students[0])

    assert response.status_code == 429 and response.headers["Retry-After"] == "7"


def test_fault_dropped_connection(sandbox):
    service = ServiceClient(sandbox)
    service.token
    api.set_faults(registration=sandbox.registration, drop_rate=1.0)

    with pytest.raises(requests.ConnectionError):
        service.post_score(sandbox.students[0])
    assert api.request_log(registration=sandbox.registration, kind="scores")[-1].note == "connection dropped (fault)"


def test_fault_timeout(sandbox):
    service = ServiceClient(sandbox)
    service.token
    api.set_faults(registration=sandbox.registration, timeout_rate=1.0, timeout_seconds=1.5)

    with pytest.raises(requests.Timeout):
        service.call(
            "POST", sandbox.line_item_url + "/scores", json={}, timeout=0.5,
            headers={"Content-Type": api.SCORE_MEDIA_TYPE},
        )


def test_fault_added_latency(sandbox):
    service = ServiceClient(sandbox)
    service.token
    api.set_faults(registration=sandbox.registration, latency_ms=400)

    response = service.post_score(sandbox.students[0])

    assert response.status_code == 200 and response.elapsed.total_seconds() >= 0.4


def test_fault_outage_window(sandbox):
    service = ServiceClient(sandbox)
    service.token
    now = timezone.now()
    api.set_faults(registration=sandbox.registration, outage_start=now - timedelta(minutes=1),
                   outage_end=now + timedelta(minutes=5))

    during = service.post_score(sandbox.students[0])
    token_during = service.request_token()
    api.set_faults(registration=sandbox.registration, outage_start=now - timedelta(minutes=10),
                   outage_end=now - timedelta(minutes=5))
    after = service.post_score(sandbox.students[0])

    assert during.status_code == 503 and "outage" in during.text
    assert token_during.status_code == 503
    assert after.status_code == 200

"""What real LMSes say, kept: Moodle's reason phrase (its only words on a refusal) recorded,
classified and shown to support; the timestamp of a resend after Moodle's 409, over HTTP with the
sandbox's Moodle profile."""
from __future__ import annotations

import datetime
import functools

import pytest
from django.urls import reverse
from django.utils import timezone

from gradesync import outbox
from gradesync.ags import Answer
from gradesync.models import Delivery, DeliveryStatus
from gradesync.outcomes import Outcome, classify
from institutions.roles import SUPPORT
from sandbox_lms import api as sandbox
from tests.gradesync.test_delivery import Classroom

SECOND = datetime.timedelta(seconds=1)


@pytest.fixture
def moodle(live_server, two_institutions):
    return Classroom(live_server.url, two_institutions[1], "moodle")


@pytest.fixture
def staff_roles():
    """Transactional tests flush the groups the migration made: make them again."""
    from django.apps import apps

    from institutions.roles import sync_staff_roles

    sync_staff_roles(apps)


def _refused_moodle_grade(moodle: Classroom) -> Delivery:
    student = moodle.connected.students[0]
    launch = moodle.launch(student)
    # The learner is a teacher in Moodle's course now: Moodle cannot grade them.
    sandbox.enrol(course=moodle.connected.course, user=student, role=sandbox.Role.INSTRUCTOR)
    sandbox.forget_caches()
    moodle.finish(launch, "1.0")
    return Delivery.objects.get()


# --- The reason phrase -------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_moodle_refusal_is_kept_in_its_words_and_refused_once(moodle):
    delivery = _refused_moodle_grade(moodle)

    posts = moodle.score_posts()
    assert [(p.status, p.response_body) for p in posts] == [(400, "[]")]  # the sandbox answers as Moodle does
    exchange = delivery.exchanges.get()
    assert exchange.status_code == 400 and exchange.message == "400 Incorrect score received"
    assert exchange.outcome == Outcome.REFUSED
    assert delivery.status == DeliveryStatus.REFUSED and delivery.last_status_code == 400
    assert "LMS said: 400 Incorrect score received" in delivery.last_message
    assert "not enrolled in the course as a student" in delivery.last_message  # the Moodle rule's advice
    assert delivery.next_attempt_at is None  # not retried


@pytest.mark.django_db(transaction=True)
def test_support_sees_moodles_words_on_the_why_page_and_the_delivery_admin(moodle, staff_roles, client_for):
    delivery = _refused_moodle_grade(moodle)
    client = client_for(SUPPORT)

    why = client.get(reverse("gradesync_why_delivery", args=[delivery.pk]), follow=True)
    admin = client.get(reverse("admin:gradesync_delivery_change", args=[delivery.pk]))

    assert why.status_code == 200 and "400 Incorrect score received" in why.content.decode()
    assert "Check the learner&#x27;s enrolment in Moodle" in why.content.decode()
    assert admin.status_code == 200 and "Incorrect score received" in admin.content.decode()


@pytest.mark.parametrize(
    "status,reason,body,said",
    [
        (400, "Incorrect score received", "[]", "400 Incorrect score received"),
        (409, "Refusing score with an earlier timestamp for item 3 and user 7", "", "409 Refusing score with an earlier timestamp for item 3 and user 7"),
        (422, "Unprocessable Entity", '{"errors":[{"message":"User not found in course or is not a student"}]}',
         '{"errors":[{"message":"User not found in course or is not a student"}]}'),
        (404, "Not Found: Grade item 9 doesn't exist.", '{"status":404}', "404 Not Found: Grade item 9 doesn't exist. — {\"status\":404}"),
        (200, "OK", '{"resultUrl":"x"}', '{"resultUrl":"x"}'),
    ],
)
def test_an_answer_says_the_lms_words_body_or_status_line(status, reason, body, said):
    assert Answer(status, body, {}, 5, reason).said == said


@pytest.mark.parametrize(
    "status,reason,outcome,advice",
    [
        (400, "Incorrect score received", Outcome.REFUSED, "not enrolled in the course as a student"),
        (409, "Refusing score with an earlier timestamp for item 3 and user 7", Outcome.STALE, "later grade"),
        (404, "Not Found: Grade item 9 doesn't exist.", Outcome.REFUSED, "grade item no longer exists"),
        (400, "Bad Request", Outcome.REFUSED, "read its message"),
    ],
)
def test_moodle_rules_match_on_the_reason_phrase_when_the_body_is_empty(status, reason, outcome, advice):
    verdict = classify("moodle", status, "[]", reason)
    assert verdict.outcome == outcome and advice in verdict.advice


# --- The timestamp of a resend -------------------------------------------------------------------


def _fake_clock(monkeypatch, now: datetime.datetime) -> None:
    """Our clock for score timestamps reads `now` (the LMS and the outbox keep the real one)."""
    monkeypatch.setattr(outbox, "next_timestamp", functools.partial(outbox.next_timestamp, now=now))


def _moodle_holds(moodle: Classroom, student, when: datetime.datetime) -> None:
    """Moodle's gradebook holds a grade for the learner stamped `when` (a teacher's edit, a send whose answer we lost)."""
    cell = sandbox.grades(line_item=moodle.sandbox_line_item)[student.sub]
    cell.timestamp = when
    cell.save()


@pytest.mark.django_db(transaction=True)
def test_after_moodles_409_the_resend_takes_the_next_whole_second(moodle, monkeypatch):
    student = moodle.connected.students[0]
    launch = moodle.launch(student)
    moodle.finish(launch, "0.5", minutes_ago=1)
    our_now = (timezone.now() + datetime.timedelta(seconds=10)).replace(microsecond=200_000)
    _moodle_holds(moodle, student, our_now.replace(microsecond=700_000))  # later, in the same second
    _fake_clock(monkeypatch, our_now)

    moodle.finish(launch, "0.75")

    delivery = Delivery.objects.order_by("-id").first()
    exchanges = list(delivery.exchanges.order_by("id"))
    assert [x.status_code for x in exchanges] == [409, 200]
    assert exchanges[0].message.startswith("409 Refusing score with an earlier timestamp for item ")
    whole = our_now.replace(microsecond=0)
    assert [x.timestamp_sent for x in exchanges] == [whole, whole + SECOND]  # the smallest later second
    assert delivery.status == DeliveryStatus.SENT and delivery.last_timestamp == whole + SECOND
    assert moodle.gradebook(student) == pytest.approx(15)


@pytest.mark.django_db(transaction=True)
def test_a_second_409_is_a_refusal_with_advice_not_a_jump_into_the_future(moodle, monkeypatch):
    student = moodle.connected.students[0]
    launch = moodle.launch(student)
    moodle.finish(launch, "0.5", minutes_ago=1)
    our_now = (timezone.now() + datetime.timedelta(seconds=10)).replace(microsecond=200_000)
    _moodle_holds(moodle, student, our_now + datetime.timedelta(seconds=30))  # a teacher's edit, Moodle's clock ahead
    _fake_clock(monkeypatch, our_now)

    moodle.finish(launch, "0.75")

    delivery = Delivery.objects.order_by("-id").first()
    exchanges = list(delivery.exchanges.order_by("id"))
    assert [x.status_code for x in exchanges] == [409, 409]  # resent once, not for ever
    whole = our_now.replace(microsecond=0)
    assert exchanges[1].timestamp_sent == whole + SECOND  # never further ahead than one second
    assert delivery.status == DeliveryStatus.REFUSED
    assert "Moodle holds a later grade" in delivery.last_message and "409 Refusing score" in delivery.last_message
    assert moodle.gradebook(student) == pytest.approx(10)


NOW = datetime.datetime(2026, 12, 1, 10, 0, 5, 400_000, tzinfo=datetime.timezone.utc)


@pytest.mark.parametrize(
    "last,expected",
    [
        (None, NOW.replace(microsecond=0)),  # whole seconds
        (NOW - datetime.timedelta(minutes=5), NOW.replace(microsecond=0)),  # now, when later than the stored one
        (NOW.replace(microsecond=100_000), NOW.replace(microsecond=0) + SECOND),  # same second: the next one
        (NOW.replace(microsecond=900_000), NOW.replace(microsecond=0) + SECOND),  # later in our second: still the next
        (NOW + datetime.timedelta(seconds=7.3), NOW.replace(microsecond=0) + datetime.timedelta(seconds=8)),  # stored ahead of our clock: +1 s
    ],
)
def test_moodle_timestamps_are_the_smallest_later_whole_second(last, expected):
    assert outbox.next_timestamp(last, "moodle", now=NOW) == expected


def test_other_lms_timestamps_keep_their_microseconds_and_increase():
    assert outbox.next_timestamp(None, "canvas", now=NOW) == NOW
    assert outbox.next_timestamp(NOW, "canvas", now=NOW) == NOW + datetime.timedelta(milliseconds=1)
    assert outbox.next_timestamp(NOW - SECOND, "other", now=NOW) == NOW

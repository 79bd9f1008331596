"""Learners and instructors (issue #14 items 8–10, 12–15): what each page now tells its reader.

The result page says whether the grade reached the LMS; the instructor's grade sync tells "the LMS
holds X, a newer grade is pending" from "never sent"; videos carry captions; the reading timer
announces only what matters; the picker keeps what was typed and names every problem. The course
navigation entry and the picker go over real HTTP with the sandbox LMS.
"""
from __future__ import annotations

import html
import re
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from courseware.captions import CaptionsRefused, captions_from_transcript, check_captions
from courseware.demo import load_demo
from courseware.models import Activity, ActivityKind, Attempt
from gradesync.models import Delivery, DeliveryStatus, Result
from institutions.models import Course, GradePolicy
from institutions.roles import SUPPORT
from tests.courseware_factories import ActivityFactory, LtiUserFactory, QuestionFactory

pytestmark = pytest.mark.django_db

CAPTIONS = "WEBVTT\n\n1\n00:00:00.000 --> 00:00:04.000\nHi, and welcome back.\n"


def take(client, link, *, right: int):
    """Start an attempt and answer `right` questions correctly (choice 0); returns the result page."""
    client.post(reverse("courseware:start", kwargs={"link_id": link.pk}))
    attempt = client.get(reverse("courseware:play", kwargs={"link_id": link.pk})).context["attempt"]
    answers = {f"q-{q.pk}": "0" if n < right else "1" for n, q in enumerate(link.activity.questions.all())}
    return client.post(
        reverse("courseware:submit", kwargs={"link_id": link.pk, "attempt_id": attempt.pk}), answers, follow=True
    )


def text(response) -> str:
    body = re.sub(r"<(style|script)\b.*?</\1>", " ", response.content.decode(), flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", body))).replace(" .", ".").replace(" ,", ",")


@pytest.fixture
def practice(north_course):
    """A practice test (unlimited attempts) of two questions."""
    activity = ActivityFactory(slug="practice", title="Practice test: ports", kind=ActivityKind.PRACTICE_TEST)
    for n in range(2):
        QuestionFactory(activity=activity, position=n)
    return activity


# --- 10. The result page says where the grade is -------------------------------------------------


def test_the_result_page_says_pending_then_sent_with_a_way_back_to_the_course(client, launched, link_to, north_course, quiz):
    link = link_to(quiz)
    launch = launched(north_course)
    launch.return_url = "https://lms.example.edu/courses/7/modules"
    launch.save()

    page = take(client, link, right=4)

    assert "Your grade (100%) is being sent to your LMS gradebook." in text(page)
    assert 'href="https://lms.example.edu/courses/7/modules" id="back-to-course"' in page.content.decode()
    attempt = Attempt.objects.get()
    Delivery.objects.filter(result__source_ref=f"courseware-attempt-{attempt.pk}").update(
        status=DeliveryStatus.SENT, sent_at=timezone.now()
    )
    again = client.get(reverse("courseware:attempt", kwargs={"link_id": link.pk, "attempt_id": attempt.pk}))
    assert "Sent to your LMS gradebook: 100%." in text(again)
    assert 'data-state="sent"' in again.content.decode()


def test_the_result_page_says_why_a_grade_is_not_sent(client, launched, link_to, north_course, quiz):
    link = link_to(quiz)
    launched(north_course, role="instructor")
    page = take(client, link, right=1)
    assert "Not sent to your LMS gradebook:" in text(page)
    assert 'data-state="not_eligible"' in page.content.decode()
    assert not Delivery.objects.exists()


def test_the_result_page_says_the_policy_keeps_a_better_attempt(client, launched, link_to, north_course, practice):
    north_course.institution.grade_policy = GradePolicy.HIGHEST
    north_course.institution.save()
    link = link_to(practice)
    launched(north_course)
    take(client, link, right=2)
    Delivery.objects.update(status=DeliveryStatus.SENT, sent_at=timezone.now())

    worse = take(client, link, right=0)

    assert "Your institution's grade policy (Highest attempt) keeps another attempt: your LMS gradebook holds 100%." in text(worse)
    assert Delivery.objects.count() == 1  # nothing new to send


def test_the_refusal_of_the_lms_is_told_in_its_words(client, launched, link_to, north_course, quiz):
    link = link_to(quiz)
    launched(north_course)
    take(client, link, right=2)
    Delivery.objects.update(status=DeliveryStatus.REFUSED, last_message="Allowed Attempts reached")
    attempt = Attempt.objects.get()
    page = client.get(reverse("courseware:attempt", kwargs={"link_id": link.pk, "attempt_id": attempt.pk}))
    assert "Your LMS refused the grade (50%)" in text(page) and "The LMS said: Allowed Attempts reached" in text(page)


# --- 8. Grade sync: held vs never sent, legend, local time; 14. a real progress bar -------------


def _result(course, learner, activity, score, *, status, sent_ago=None):
    result = Result.objects.create(
        source_ref=f"r-{learner.pk}-{score}-{status}", lti_user=learner, course=course, activity_key=str(activity.pk),
        activity_title=activity.title, score=Decimal(score), completed_at=timezone.now(), launch_role="learner",
        is_eligible=True,
    )
    return Delivery.objects.create(
        result=result, course=course, institution=course.institution, registration=course.deployment.registration,
        deployment=course.deployment, lti_user=learner, activity_key=str(activity.pk), score=result.score, status=status,
        recorded_at=timezone.now(), sent_at=timezone.now() if status == DeliveryStatus.SENT else None,
    )


def test_grade_sync_tells_a_newer_pending_grade_from_one_never_sent(client, launched, link_to, north_course, quiz):
    link_to(quiz)
    registration = north_course.deployment.registration
    ada, ben = LtiUserFactory(registration=registration, name="Ada"), LtiUserFactory(registration=registration, name="Ben")
    _result(north_course, ada, quiz, "0.8", status=DeliveryStatus.SENT)
    _result(north_course, ada, quiz, "0.9", status=DeliveryStatus.PENDING)
    _result(north_course, ben, quiz, "0.5", status=DeliveryStatus.RETRYING)
    launched(north_course, role="instructor")

    page = client.get(reverse("courseware:grade_sync", args=[north_course.pk]))

    body = text(page)
    assert re.search(r"The LMS holds 80% \(sent [\d\- :]+ UTC ?\) ?; ?newer 90% pending", body), body
    assert "Never sent; 50% pending" in body
    assert 'id="legend"' in page.content.decode() and "No attempt" in body and "Refused / Failed" in body
    # Times go out in UTC with their ISO instant; the page's script shows them in the reader's zone.
    assert re.search(r'<time datetime="\d{4}-\d\d-\d\dT[\d:.]+\+00:00" data-local', page.content.decode())
    assert '<th scope="row">Ada</th>' in page.content.decode()


def test_the_resync_progress_is_a_progressbar_with_its_values_and_a_polite_status(
    client, launched, link_to, north_course, quiz, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setattr("gradesync.resync.planning._enqueue_deliveries", lambda job_id, ids: None)
    link_to(quiz)
    _result(north_course, LtiUserFactory(registration=north_course.deployment.registration), quiz, "0.8",
            status=DeliveryStatus.SENT)
    launched(north_course, role="instructor")
    url = reverse("courseware:grade_sync", args=[north_course.pk])
    with django_capture_on_commit_callbacks(execute=True):
        started = client.post(url)
    body = started.content.decode()
    bar = re.search(r'<div[^>]*role="progressbar"[^>]*>', body).group(0)
    assert 'aria-valuemin="0"' in bar and 'aria-valuemax="100"' in bar and 'aria-valuenow="0"' in bar
    assert 'aria-label="Resync progress"' in bar
    assert re.search(r'id="resync-announce"[^>]*role="status" aria-live="polite"', body)
    assert "window.location.reload" not in body  # the page is never reloaded under the reader's focus
    progress = client.get(reverse("courseware:grade_sync_progress", args=[north_course.pk])).json()
    assert progress["active"] and "next_allowed_at" in progress


# --- 12. Captions ---------------------------------------------------------------------------------


@pytest.fixture
def video(link_to):
    activity = ActivityFactory(slug="ports-video", title="Common ports", kind=ActivityKind.VIDEO,
                               video_url="https://videos.example.com/ports.mp4", captions_vtt=CAPTIONS,
                               captions_language="en")
    return activity


def test_a_video_has_a_default_captions_track_served_as_webvtt(client, launched, link_to, north_course, video):
    link = link_to(video)
    launched(north_course)
    page = client.get(reverse("courseware:play", kwargs={"link_id": link.pk})).content.decode()
    captions_url = reverse("courseware:captions", kwargs={"link_id": link.pk})
    assert f'<track kind="captions" src="{captions_url}" srclang="en"' in page and " default>" in page

    served = client.get(captions_url)

    assert served.status_code == 200 and served["Content-Type"] == "text/vtt; charset=utf-8"
    assert served.content.decode() == CAPTIONS and served["Content-Language"] == "en"


def test_captions_keep_the_tenant_wall_and_need_a_player(client, launched, link_to, north_course, south_course, video):
    theirs = link_to(video, course=south_course)
    url = reverse("courseware:captions", kwargs={"link_id": theirs.pk})
    assert client.get(url).status_code == 403  # no launch, no login
    launched(north_course)
    assert client.get(url).status_code == 404  # another institution's link looks like none
    silent = ActivityFactory(slug="silent", title="Silent video", kind=ActivityKind.VIDEO, video_url="https://v.example.com/a.mp4")
    ours = link_to(silent)
    assert client.get(reverse("courseware:captions", kwargs={"link_id": ours.pk})).status_code == 404
    assert "<track" not in client.get(reverse("courseware:play", kwargs={"link_id": ours.pk})).content.decode()


def test_a_video_without_captions_is_flagged_to_the_catalog_editors(client_for):
    flagged = ActivityFactory(slug="no-captions", title="Video without words", kind=ActivityKind.VIDEO)
    ActivityFactory(slug="with-captions", title="Video with words", kind=ActivityKind.VIDEO, captions_vtt=CAPTIONS)
    ActivityFactory(slug="a-quiz", title="A quiz", kind=ActivityKind.CUSTOM_QUIZ)
    client = client_for(SUPPORT)
    changelist = reverse("admin:courseware_activity_changelist")

    missing = client.get(changelist, {"captions": "missing"})

    assert missing.status_code == 200, missing.status_code
    assert [a.title for a in missing.context["cl"].result_list] == ["Video without words"]
    assert "⚠ missing" in missing.content.decode()
    change = client.get(reverse("admin:courseware_activity_change", args=[flagged.pk]))
    assert "This video has no captions" in text(change)


def test_captions_are_checked_as_a_browser_reads_them():
    assert check_captions(CAPTIONS.replace("\n", "\r\n")) == CAPTIONS
    for wrong, reason in [
        ("1\n00:00:00.000 --> 00:00:04.000\nHi", "start with a line “WEBVTT”"),
        ("WEBVTT\n\nHi there", "No cue found"),
        ("WEBVTT\n\n00:00:00.000 --> 00:00:04.000\n" + "x" * 200_001, "limited to 200,000 characters"),
    ]:
        with pytest.raises(CaptionsRefused, match=reason):
            check_captions(wrong)


def test_demo_videos_get_captions_from_their_timed_transcripts(capsys):
    class Out:
        def write(self, line):
            pass

    load_demo(base_url="http://127.0.0.1:8000", stdout=Out())
    videos = Activity.objects.filter(kind=ActivityKind.VIDEO)
    assert videos.count() == 2
    for video in videos:
        assert check_captions(video.captions_vtt) == video.captions_vtt
        assert "00:00:00.000 --> 00:00:" in video.captions_vtt
    assert captions_from_transcript("no marks here") == ""


# --- 13. The reading timer announces only what matters ----------------------------------------


def test_the_reading_timer_is_not_a_live_region_only_its_announcements_are(client, launched, link_to, north_course):
    reading = ActivityFactory(slug="osi-reading", title="The OSI model", kind=ActivityKind.READING)
    link = link_to(reading)
    launched(north_course)
    page = client.get(reverse("courseware:play", kwargs={"link_id": link.pk})).content.decode()
    status = re.search(r'<div class="notice" id="status"[^>]*>', page).group(0)
    assert "aria-live" not in status  # the ticking seconds are not read out
    assert re.search(r'<p id="timer-announce" class="visually-hidden" role="status" aria-live="polite"></p>', page)
    assert 'announce.textContent = "Completed. Full credit (1/1) was recorded."' in page
    assert "Halfway there" in page and page.count("announce.textContent =") == 2


# --- 15. Errors announced on the schedule page --------------------------------------------------


def test_a_schedule_error_is_an_alert_tied_to_its_field(client, launched, link_to, north_course, quiz):
    link_to(quiz)
    launched(north_course, role="instructor")
    refused = client.post(reverse("courseware:schedule"), {"activity": str(quiz.pk), "attempts_allowed": "lots"})
    body = refused.content.decode()
    assert refused.status_code == 400
    assert re.search(r'id="error" role="alert" tabindex="-1"', body)
    assert f'aria-invalid="true" aria-describedby="row-error-{quiz.pk}"' in body
    assert f'aria-label="Attempts allowed for {quiz.title}"' in body


# --- Over HTTP with the sandbox LMS: the course navigation entry (8) and the picker (9, 15) ------

from sandbox_lms import api as sandbox  # noqa: E402
from sandbox_lms.launches import COURSE_NAVIGATION_PREFIX, LoginInitiation  # noqa: E402
from tests import lms  # noqa: E402


@pytest.fixture
def connected(live_server, two_institutions):
    return lms.connect(live_server.url, two_institutions[0], profile="canvas")


def as_sandbox_user(connected, user):
    http = lms.browser()
    http.post(f"{connected.base_url}/sandbox-lms/act-as/", data={"user": user.pk}, timeout=10)
    return http


def course_page(http, connected) -> str:
    return http.get(f"{connected.base_url}/sandbox-lms/courses/{connected.course.pk}/", timeout=10).text


@pytest.mark.django_db(transaction=True)
def test_grade_sync_is_in_the_sandbox_course_navigation_for_instructors(connected):
    http = as_sandbox_user(connected, connected.instructor)
    page = course_page(http, connected)
    entry = re.search(r'<nav aria-label="Course navigation" id="course-navigation"><a href="([^"]+)">Grade sync</a>', page)
    assert entry, page

    opened = http.get(connected.base_url + entry.group(1), timeout=10)
    action, fields = sandbox.parse_autopost(opened.text)
    tools = sandbox.follow_launch(http, LoginInitiation(url=action, params=fields, method="POST"))

    assert tools.status_code == 200 and tools.url.endswith(reverse("courseware:instructor_tools")), tools.text[:300]
    assert "Grade sync" in tools.text
    course = Course.objects.get()
    grade_sync = http.get(connected.base_url + reverse("courseware:grade_sync", args=[course.pk]), timeout=10)
    assert grade_sync.status_code == 200 and 'id="legend"' in grade_sync.text
    # The entry is no module item: not among the course's activities, not copied with the course.
    assert connected.course.resource_links.filter(resource_link_id__startswith=COURSE_NAVIGATION_PREFIX).count() == 1
    assert course_page(http, connected).count(">Launch<") == page.count(">Launch<")
    copy = sandbox.copy_course(course=connected.course, title="Copy")
    assert not copy.resource_links.filter(resource_link_id__startswith=COURSE_NAVIGATION_PREFIX).exists()

    student = as_sandbox_user(connected, connected.students[0])
    assert 'id="course-navigation"' not in course_page(student, connected)
    assert student.get(connected.base_url + entry.group(1), timeout=10).status_code == 404


@pytest.mark.django_db(transaction=True)
def test_the_picker_marks_placed_activities_keeps_what_was_typed_and_names_every_problem(connected):
    quiz = ActivityFactory(slug="ports-quiz", title="Quiz: ports and protocols", kind=ActivityKind.CUSTOM_QUIZ, position=2)
    reading = ActivityFactory(slug="ports-reading", title="Reading: ports", kind=ActivityKind.READING, position=3)
    lab = ActivityFactory(slug="ports-lab", title="Lab: ports", kind=ActivityKind.LAB, position=4)
    assert lms.deep_link(lms.browser(), connected, {quiz.pk: {"graded": True, "points": 10}}).status_code == 200

    http = lms.browser()
    picker = sandbox.follow_launch(http, sandbox.start_deep_linking(user=connected.instructor, course=connected.course))
    assert picker.status_code == 200
    row = re.search(rf'<li class="row"[^>]*>\s*<span class="pick"><label><input type="checkbox" name="activity" value="{quiz.pk}".*?</li>', picker.text, re.S).group(0)
    assert "already in this course" in row
    assert f'aria-label="Graded: {quiz.title}"' in row and f'aria-label="Points for {quiz.title}"' in row
    assert 'id="activity-search"' in picker.text and picker.text.count('class="select-all"') == 1

    refused = http.post(picker.url, headers={"Referer": picker.url}, timeout=10, data={
        "csrfmiddlewaretoken": lms.csrf_token(picker.text),
        "activity": [str(reading.pk), str(lab.pk)],
        f"graded-{reading.pk}": "on", f"points-{reading.pk}": "0",
        f"graded-{lab.pk}": "on", f"points-{lab.pk}": "lots",
        f"points-{quiz.pk}": "12.5",  # typed on a row not chosen: kept too
    })

    assert refused.status_code == 400
    alert = re.search(r'<div class="error" id="pick-error" role="alert" tabindex="-1">(.*?)</div>', refused.text, re.S).group(1)
    said = html.unescape(alert)
    assert "fix these 2 problems" in said
    assert "Points for “Reading: ports” must be a number greater than 0" in said
    assert "Points for “Lab: ports” must be a number greater than 0" in said
    assert f'name="points-{lab.pk}" value="lots"' in refused.text and f'name="points-{quiz.pk}" value="12.5"' in refused.text
    assert re.search(rf'name="activity" value="{reading.pk}" checked', refused.text)
    assert not re.search(rf'name="graded-{quiz.pk}" checked', refused.text)  # left unticked, stays unticked
    assert f'aria-invalid="true" aria-describedby="error-{lab.pk}"' in refused.text
    assert connected.course.line_items.filter(label__in=[reading.title, lab.title]).count() == 0

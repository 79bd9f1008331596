"""The whole flow over HTTP against the sandbox LMS: an instructor places activities through
deep linking, a student launches one and finishes it, and the grade reaches the gradebook."""
from __future__ import annotations

import html
import re
from decimal import Decimal

import pytest
from lti_tool.models import LtiLineItem

from courseware.models import Activity, ActivityKind, ActivityLink, Attempt, Launch, Question
from gradesync.models import Delivery, Result
from institutions.models import Course
from sandbox_lms import api
from tests import lms

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def catalog():
    section = Activity.objects.create(slug="s1", title="Section 1: Networking basics", kind=ActivityKind.SECTION_HEADER, position=1)
    quiz = Activity.objects.create(slug="q1", title="Quiz: OSI layers", kind=ActivityKind.CUSTOM_QUIZ, position=2, section=section, default_points=10)
    for i, (prompt, answer) in enumerate([("Layer 3?", 1), ("Layer 4?", 2), ("Layer 2?", 0), ("Layer 7?", 3)]):
        Question.objects.create(activity=quiz, position=i, prompt=prompt, choices=["Data link", "Network", "Transport", "Application"], answer=answer)
    reading = Activity.objects.create(slug="r1", title="Reading: What is a packet?", kind=ActivityKind.READING, position=3, section=section, default_points=5)
    return section, quiz, reading


@pytest.fixture
def connected(live_server, two_institutions):
    return lms.connect(live_server.url, two_institutions[0], profile="canvas")


def link_for(connected, activity):
    links = [l for l in connected.course.resource_links.all() if l.custom.get("activity_id") == str(activity.pk)]
    assert links, f"no sandbox link for {activity}"
    return links[-1]


def place(connected, catalog):
    section, quiz, reading = catalog
    http = lms.browser()
    done = lms.deep_link(
        http, connected, {section.pk: {"graded": False}, quiz.pk: {"graded": True, "points": 25}, reading.pk: {"graded": True, "points": 5}}
    )
    assert done.status_code == 200, done.text[:1000]
    return done


def take_quiz(http, launched, answers):
    assert launched.status_code == 200 and "Quiz: OSI layers" in launched.text, launched.text[:500]
    page = launched
    if 'name="q-' not in page.text:
        start = re.search(r'action="([^"]+/start/)"', page.text).group(1)
        page = http.post(f"{lms_base(launched.url)}{start}", data={"csrfmiddlewaretoken": lms.csrf_token(page.text)}, timeout=10)
    action = html.unescape(re.search(r'<form method="post" action="([^"]+/submit/)"', page.text).group(1))
    questions = re.findall(r'name="(q-\d+)"', page.text)
    form = {"csrfmiddlewaretoken": lms.csrf_token(page.text)}
    for field, answer in zip(dict.fromkeys(questions), answers):
        form[field] = str(answer)
    return http.post(f"{lms_base(launched.url)}{action}", data=form, timeout=10)


def lms_base(url):
    return re.match(r"https?://[^/]+", url).group(0)


def test_instructor_places_three_items_and_the_lms_gets_line_items_with_their_points(connected, catalog):
    section, quiz, reading = catalog
    done = place(connected, catalog)
    assert "created 3 links" in done.text or "3" in done.text
    labels = {item.label: item.score_maximum for item in connected.course.line_items.all()}
    assert labels.get("Quiz: OSI layers") == 25
    assert labels.get("Reading: What is a packet?") == 5
    assert "Section 1: Networking basics" not in labels  # ungraded: a link without a line item
    item = connected.course.line_items.get(label="Quiz: OSI layers")
    assert item.resource_id == str(quiz.pk) and item.tag == "courseware"
    assert {l.title for l in connected.course.resource_links.all()} >= {section.title, quiz.title, reading.title}


def test_a_section_header_cannot_be_forced_graded(connected, catalog):
    section, quiz, _ = catalog
    refused = lms.deep_link(lms.browser(), connected, {section.pk: {"graded": True, "points": 3}})
    assert refused.status_code == 400
    assert "section header: it can only be added ungraded" in html.unescape(refused.text)
    assert not connected.course.line_items.filter(label=section.title).exists()


def test_points_must_be_positive(connected, catalog):
    _, quiz, _ = catalog
    refused = lms.deep_link(lms.browser(), connected, {quiz.pk: {"graded": True, "points": 0}})
    assert refused.status_code == 400 and "greater than 0" in html.unescape(refused.text)


def test_accept_multiple_false_allows_one_item(connected, catalog):
    _, quiz, reading = catalog
    refused = lms.deep_link(lms.browser(), connected, {quiz.pk: {"graded": True, "points": 10}, reading.pk: {}}, accept_multiple=False)
    assert refused.status_code == 400 and "one activity at a time" in refused.text


def test_accept_lineitem_false_refuses_graded_items(connected, catalog):
    _, quiz, _ = catalog
    refused = lms.deep_link(lms.browser(), connected, {quiz.pk: {"graded": True, "points": 10}}, accept_lineitem=False)
    assert refused.status_code == 400 and "does not accept graded items" in refused.text
    ungraded = lms.deep_link(lms.browser(), connected, {quiz.pk: {}}, accept_lineitem=False)
    assert ungraded.status_code == 200
    assert not connected.course.line_items.filter(label=quiz.title).exists()


def test_returning_with_nothing_selected_works(connected, catalog):
    done = lms.deep_link(lms.browser(), connected, {})
    assert done.status_code == 200
    assert api.request_log(registration=connected.seeded.registration, kind="deep_linking_return")[-1].status == 200


def test_only_instructors_open_the_picker(connected, catalog):
    student = connected.students[0]
    with pytest.raises(Exception):
        api.start_deep_linking(user=student, course=connected.course)


def test_student_completes_a_quiz_and_the_grade_reaches_the_gradebook(connected, catalog):
    _, quiz, _ = catalog
    place(connected, catalog)
    student = connected.students[0]
    http = lms.browser()
    launched = lms.launch(http, user=student, resource_link=link_for(connected, quiz))
    result_page = take_quiz(http, launched, [1, 2, 0, 0])  # 3 of 4 right
    assert result_page.status_code == 200
    result = Result.objects.get()
    assert result.score == Decimal("0.75") and result.is_eligible
    course = Course.objects.get()
    assert course.title == connected.course.title and course.institution == connected.institution
    line_item = connected.course.line_items.get(label="Quiz: OSI layers")
    cell = api.grades(line_item=line_item)[student.sub]
    assert cell.result == pytest.approx(18.75)  # 0.75 of the 25 points the instructor chose
    assert Delivery.objects.get().status == "sent"


def test_launch_stores_the_line_item_so_the_first_grade_needs_no_lookup(connected, catalog):
    _, quiz, _ = catalog
    place(connected, catalog)
    lms.launch(lms.browser(), user=connected.students[1], resource_link=link_for(connected, quiz))
    link = ActivityLink.objects.get(activity=quiz)
    assert link.graded
    stored = LtiLineItem.objects.get(resource_link=link.resource_link)
    assert stored.url.endswith(f"/line_items/{connected.course.line_items.get(label=quiz.title).pk}") or "line" in stored.url


def test_course_dates_come_from_canvas_custom_parameters(connected, catalog):
    _, quiz, _ = catalog
    place(connected, catalog)
    lms.launch(lms.browser(), user=connected.students[0], resource_link=link_for(connected, quiz))
    course = Course.objects.get()
    assert course.dates_source == "lms"
    assert course.starts_at == connected.course.starts_at and course.ends_at == connected.course.ends_at


def test_test_user_sees_content_but_never_syncs(connected, catalog):
    _, quiz, _ = catalog
    place(connected, catalog)
    tester = api.create_user(platform=connected.seeded.platform, name="Test Student")
    api.enrol(course=connected.course, user=tester, role=api.Role.TEST_USER)
    http = lms.browser()
    take_quiz(http, lms.launch(http, user=tester, resource_link=link_for(connected, quiz)), [1, 2, 0, 3])
    attempt = Attempt.objects.get()
    assert not attempt.eligible and "Student view" in attempt.ineligible_reason
    assert Launch.objects.get(lti_user__sub=tester.sub).role == "test_user"
    assert not Delivery.objects.exists()


def test_framing_and_cookie_headers(connected, catalog):
    _, quiz, _ = catalog
    place(connected, catalog)
    http = lms.browser()
    launched = lms.launch(http, user=connected.students[0], resource_link=link_for(connected, quiz))
    player = launched
    assert "X-Frame-Options" not in player.headers  # the LMS frames the player
    picker = api.follow_launch(lms.browser(), api.start_deep_linking(user=connected.instructor, course=connected.course))
    assert "X-Frame-Options" not in picker.headers
    admin = lms.browser().get(f"{connected.base_url}/admin/login/", timeout=10)
    assert admin.headers.get("X-Frame-Options") == "DENY"  # nothing else is frameable
    assert http.cookies.get("sessionid")


def test_launch_endpoints_are_csrf_exempt_and_the_player_is_not(connected, catalog):
    _, quiz, _ = catalog
    place(connected, catalog)
    http = lms.browser()
    launched = lms.launch(http, user=connected.students[0], resource_link=link_for(connected, quiz))
    submit_without_token = http.post(launched.url.replace("/play/", "/play/") + "start/", data={}, timeout=10)
    assert submit_without_token.status_code == 403

"""Instructor tools without a gradebook column (issue #13, item 7), over HTTP against the sandbox LMS.

The picker offers the instructor tools as an ungraded link (no line item, so the LMS makes no
column); an instructor who opens it lands on the course's tools; a learner is sent back before
anything is written; a launch that is not for an activity never stores a line item, even when the
LMS names one (Moodle's hand-added External tool gets a 100-point column).
"""
from __future__ import annotations

import html
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from django.urls import reverse
from lti_tool.models import LtiLineItem, LtiResourceLink, LtiUser

from courseware.launch.deep_linking import instructor_tools_item
from courseware.models import Activity, ActivityKind, ActivityLink, Launch, Placement, Question
from institutions.models import Course
from institutions.tool_configuration import INSTRUCTOR_TOOLS_PAGE, TOOL_PAGE_PARAM
from sandbox_lms import api
from tests import lms

pytestmark = pytest.mark.django_db(transaction=True)

TOOLS_CUSTOM = {TOOL_PAGE_PARAM: INSTRUCTOR_TOOLS_PAGE}
TOOLS_PATH = "/courseware/instructor-tools/"


@pytest.fixture
def quiz():
    quiz = Activity.objects.create(slug="q1", title="Quiz: OSI layers", kind=ActivityKind.CUSTOM_QUIZ, position=1, default_points=10)
    for i in range(2):
        Question.objects.create(activity=quiz, position=i, prompt=f"Layer {i}?", choices=["Data link", "Network"], answer=1)
    return quiz


@pytest.fixture(params=["canvas", "moodle"])
def connected(request, live_server, two_institutions):
    return lms.connect(live_server.url, two_institutions[0], profile=request.param)


def pick(http, connected, *, tools: bool, picks: dict[int, dict[str, Any]] | None = None, **settings: Any):
    """The instructor ticks the instructor tools (and maybe activities) in the picker; returns the sandbox's answer."""
    picker = api.follow_launch(http, api.start_deep_linking(user=connected.instructor, course=connected.course, **settings))
    assert picker.status_code == 200, picker.text[:500]
    form: dict[str, Any] = {"csrfmiddlewaretoken": lms.csrf_token(picker.text), "activity": list(picks or {})}
    if tools:
        form["instructor_tools"] = "on"
    for activity_id, choice in (picks or {}).items():
        if choice.get("graded"):
            form[f"graded-{activity_id}"] = "on"
            form[f"points-{activity_id}"] = str(choice.get("points", ""))
    returned = http.post(picker.url, data=form, headers={"Referer": picker.url}, timeout=10)
    if 'id="deep-link-return"' not in returned.text:
        return returned
    action, fields = api.parse_autopost(returned.text)
    return http.post(action, data=fields, timeout=10)


def tools_link(connected) -> api.SandboxResourceLink:
    links = [link for link in connected.course.resource_links.all() if link.custom.get(TOOL_PAGE_PARAM) == INSTRUCTOR_TOOLS_PAGE]
    assert len(links) == 1, [link.custom for link in connected.course.resource_links.all()]
    return links[0]


def columns(connected) -> int:
    return api.SandboxLineItem.objects.filter(course=connected.course).count()


def written() -> dict[str, int]:
    return {
        "users": LtiUser.objects.count(), "launches": Launch.objects.count(), "courses": Course.objects.count(),
        "resource links": LtiResourceLink.objects.count(), "activity links": ActivityLink.objects.count(),
        "line items": LtiLineItem.objects.count(),
    }


# --- The picker ------------------------------------------------------------------------------


def test_the_picker_offers_the_instructor_tools_first_as_an_ungraded_option(connected, quiz):
    picker = api.follow_launch(lms.browser(), api.start_deep_linking(user=connected.instructor, course=connected.course))
    page = html.unescape(picker.text)
    assert picker.status_code == 200
    assert "Instructor tools (grade sync, attempts allowed)" in page and "no gradebook column" in page
    assert page.index('name="instructor_tools"') < page.index(f'name="activity" value="{quiz.pk}"')
    assert 'name="graded-instructor_tools"' not in page  # nothing to grade it with


def test_deep_linked_instructor_tools_make_a_link_without_a_gradebook_column(connected, quiz):
    before = columns(connected)
    done = pick(lms.browser(), connected, tools=True)
    assert done.status_code == 200, done.text[:500]
    link = tools_link(connected)
    assert link.custom == TOOLS_CUSTOM and link.title.startswith("Instructor tools")
    assert columns(connected) == before and not link.line_items.exists()
    assert not Placement.objects.exists()  # not a catalog activity
    assert api.request_log(registration=connected.seeded.registration, kind="deep_linking_return")[-1].response_body.startswith(
        "created 1 links, 0 line items"
    )


def test_instructor_tools_come_with_activities_when_the_placement_takes_several(connected, quiz):
    before = columns(connected)
    done = pick(lms.browser(), connected, tools=True, picks={quiz.pk: {"graded": True, "points": 20}})
    assert done.status_code == 200, done.text[:500]
    tools_link(connected)
    assert columns(connected) == before + 1  # the quiz's column only
    assert connected.course.line_items.get(resource_id=str(quiz.pk)).score_maximum == 20


def test_a_placement_taking_one_item_takes_the_tools_alone_but_not_with_an_activity(connected, quiz):
    refused = pick(lms.browser(), connected, tools=True, picks={quiz.pk: {}}, accept_multiple=False)
    assert refused.status_code == 400 and "one activity at a time" in html.unescape(refused.text)
    assert not [link for link in connected.course.resource_links.all() if link.custom == TOOLS_CUSTOM]
    alone = pick(lms.browser(), connected, tools=True, accept_multiple=False, accept_lineitem=False)
    assert alone.status_code == 200
    tools_link(connected)


def test_the_content_item_has_no_line_item_and_no_nulls():
    item = instructor_tools_item(launch_url="https://tool.example/lti/launch/")
    assert "lineItem" not in item and None not in item.values()
    assert item["custom"] == TOOLS_CUSTOM and item["type"] == "ltiResourceLink"


# --- The launch ------------------------------------------------------------------------------


def test_an_instructor_opening_the_tools_lands_on_them_and_nothing_is_graded(connected, quiz):
    pick(lms.browser(), connected, tools=True)
    http = lms.browser()
    page = lms.launch(http, user=connected.instructor, resource_link=tools_link(connected))
    assert page.status_code == 200 and page.url.endswith(TOOLS_PATH), page.text[:500]
    course = Course.objects.get()
    assert f'href="{reverse("courseware:grade_sync", args=[course.pk])}"' in page.text
    assert f'href="{reverse("courseware:schedule")}"' in page.text
    assert "X-Frame-Options" not in page.headers  # framed in the LMS like the other pages
    assert not ActivityLink.objects.exists() and not LtiLineItem.objects.exists()
    # Each tool opens from there, in the same session.
    assert http.get(connected.base_url + reverse("courseware:grade_sync", args=[course.pk]), timeout=10).status_code == 200
    schedule = http.get(connected.base_url + reverse("courseware:schedule"), timeout=10)
    assert schedule.status_code == 200 and f'href="{TOOLS_PATH}"' in schedule.text


def test_a_learner_opening_the_tools_is_sent_back_and_nothing_is_written(connected, quiz):
    pick(lms.browser(), connected, tools=True)
    before = written()
    back = lms.launch(lms.browser(), user=connected.students[0], resource_link=tools_link(connected))
    refusal = back.history[-1]
    assert refusal.status_code == 302 and refusal.url.endswith("/lti/launch/")
    message = parse_qs(urlsplit(back.url).query)["lti_errormsg"][0]
    assert message.startswith("This link is for the course's instructors")
    assert "This link is for the course" in html.unescape(back.text)  # the LMS shows the reason
    assert written() == before
    assert not LtiUser.objects.filter(sub=connected.students[0].sub).exists()


def test_student_view_is_sent_back_too(connected, quiz):
    pick(lms.browser(), connected, tools=True)
    tester = api.create_user(platform=connected.seeded.platform, name="Test Student")
    api.enrol(course=connected.course, user=tester, role=api.Role.TEST_USER)
    before = written()
    back = lms.launch(lms.browser(), user=tester, resource_link=tools_link(connected))
    assert "lti_errormsg" in back.url and written() == before


def test_a_hand_added_tools_link_with_a_gradebook_column_stores_no_line_item(connected, quiz):
    """Moodle: an External tool added by hand gets a 100-point column, and every launch names it."""
    hand_added = api.add_resource_link(
        course=connected.course, title="Instructor tools", custom=TOOLS_CUSTOM, line_item={"score_maximum": 100}
    )
    page = lms.launch(lms.browser(), user=connected.instructor, resource_link=hand_added)
    assert page.status_code == 200 and page.url.endswith(TOOLS_PATH)
    assert Launch.objects.get().resource_link is not None  # the launch itself is recorded
    assert not LtiLineItem.objects.exists() and not ActivityLink.objects.exists()


def test_tools_custom_parameter_wins_over_an_activity_named_beside_it(connected, quiz):
    """A link that says it is the tools is never graded, even if its custom parameters also name an activity."""
    odd = api.add_resource_link(
        course=connected.course, title="Tools", custom={**TOOLS_CUSTOM, "activity_id": str(quiz.pk)}, line_item={"score_maximum": 10}
    )
    page = lms.launch(lms.browser(), user=connected.instructor, resource_link=odd)
    assert page.url.endswith(TOOLS_PATH)
    assert not LtiLineItem.objects.exists() and not ActivityLink.objects.exists()


def test_an_instructors_link_that_names_no_activity_stores_no_line_item(connected, quiz):
    """The sandbox's seeded link has a line item and none of our activities: not ours to grade."""
    seeded = connected.seeded.resource_link
    assert seeded.line_items.exists()
    page = lms.launch(lms.browser(), user=connected.instructor, resource_link=seeded)
    assert page.status_code == 200 and page.url.endswith(reverse("courseware:schedule"))
    assert not LtiLineItem.objects.exists()


# --- The player ------------------------------------------------------------------------------


def test_the_player_shows_the_instructor_the_tools_and_not_the_learner(connected, quiz):
    done = lms.deep_link(lms.browser(), connected, {quiz.pk: {"graded": True, "points": 10}})
    assert done.status_code == 200
    quiz_link = [link for link in connected.course.resource_links.all() if link.custom.get("activity_id") == str(quiz.pk)][-1]

    http = lms.browser()
    as_instructor = lms.launch(http, user=connected.instructor, resource_link=quiz_link)
    assert as_instructor.status_code == 200 and "/play/" in as_instructor.url
    assert 'id="instructor-tools-link"' in as_instructor.text and f'href="{TOOLS_PATH}"' in as_instructor.text
    hub = http.get(connected.base_url + TOOLS_PATH, timeout=10)
    assert hub.status_code == 200 and "Grade sync" in hub.text

    learner_http = lms.browser()
    as_learner = lms.launch(learner_http, user=connected.students[0], resource_link=quiz_link)
    assert as_learner.status_code == 200 and "/play/" in as_learner.url
    assert 'id="instructor-tools-link"' not in as_learner.text and TOOLS_PATH not in as_learner.text
    # Typing the address is no way round: the learner's session is refused.
    typed = learner_http.get(connected.base_url + TOOLS_PATH, timeout=10)
    assert typed.status_code == 403 and "for the course" in html.unescape(typed.text)

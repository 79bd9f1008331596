"""Every learner, instructor and support page passes axe-core's WCAG 2.1 A/AA rules in Chromium (issue #14).

axe-core comes from npm (package.json, the committed lock file; `make node_modules` runs `npm ci`, and
`make test` depends on it); it is evaluated in each page, never fetched from a CDN. The walk goes the
way people do: the instructor places activities with the picker (its select-all, search and kept
values tried on the way) and opens "Grade sync" from the sandbox course's navigation; a learner
takes a quiz, a reading and a video; support opens the why page, sync health, the resync form and a job.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.urls import reverse
from django.utils import timezone

from courseware.models import Activity, ActivityKind, Question
from gradesync.models import DeliveryStatus, ResyncJob, ResyncJobStatus
from institutions.roles import SUPPORT
from sandbox_lms.models import Role
from tests import lms
from tests.factories import CourseFactory
from tests.browser import ARTIFACTS, browser_marks, log_in, page, staff_roles  # noqa: F401 (fixtures)

pytestmark = browser_marks

AXE = Path(__file__).resolve().parent.parent / "node_modules" / "axe-core" / "axe.min.js"
WCAG_21_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]
CAPTIONS = "WEBVTT\n\n1\n00:00:00.000 --> 00:00:05.000\nIn this video we go through the common ports.\n"
checked: list[str] = []


def assert_accessible(page, name: str) -> None:
    """axe-core over the whole page; fails with each violation's rule, help and the elements involved."""
    if not AXE.exists():
        pytest.fail("node_modules/axe-core is missing: run `make node_modules` (npm ci)")
    # Evaluated through the browser's debugging protocol: a page's Content-Security-Policy (nonced
    # scripts only) would refuse an injected <script> tag.
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        page.evaluate(AXE.read_text())
    violations = page.evaluate(
        """async (tags) => {
            const result = await axe.run(document, {runOnly: {type: "tag", values: tags}, resultTypes: ["violations"]});
            return result.violations.map(v => ({rule: v.id, impact: v.impact, help: v.help,
                nodes: v.nodes.slice(0, 5).map(n => n.target.join(" ") + " — " + n.failureSummary)}));
        }""",
        WCAG_21_AA,
    )
    checked.append(name)
    assert not violations, f"{name} ({page.url}):\n" + json.dumps(violations, indent=1, ensure_ascii=False)


def no_sideways_scroll(page) -> bool:
    return page.evaluate("() => document.documentElement.scrollWidth <= document.documentElement.clientWidth")


@pytest.fixture
def catalog(live_server):
    section = Activity.objects.create(slug="s1", title="Section 1: Ports", kind=ActivityKind.SECTION_HEADER, position=1)
    quiz = Activity.objects.create(slug="ports-quiz", title="Quiz: ports and protocols", kind=ActivityKind.CUSTOM_QUIZ,
                                   position=2, section=section, default_points=10)
    for i, (prompt, answer) in enumerate([("Which port does HTTPS use?", 1), ("Which port does SSH use?", 0)]):
        Question.objects.create(activity=quiz, position=i, prompt=prompt, choices=["22", "443", "80"], answer=answer)
    reading = Activity.objects.create(slug="ports-reading", title="Reading: well-known ports", kind=ActivityKind.READING,
                                      position=3, section=section, body="Port 443 is HTTPS.\n\nPort 22 is SSH.")
    video = Activity.objects.create(slug="ports-video", title="Video: common ports", kind=ActivityKind.VIDEO,
                                    position=4, section=section, body="[00:00] In this video we go through the common ports.",
                                    video_url=f"{live_server.url}/media/ports.mp4", captions_vtt=CAPTIONS)
    other = Activity.objects.create(slug="s2", title="Section 2: Troubleshooting", kind=ActivityKind.SECTION_HEADER, position=5)
    lab = Activity.objects.create(slug="ping-lab", title="Lab: ping the gateway", kind=ActivityKind.LAB, position=6,
                                  section=other, body="Ping 10.0.0.1.")
    Question.objects.create(activity=lab, position=0, prompt="Which command tests reachability?", choices=[], answer=["ping"])
    return {"quiz": quiz, "reading": reading, "video": video, "lab": lab, "section": section}


def act_as(page, live_server, name: str) -> None:
    page.goto(f"{live_server.url}/sandbox-lms/")
    page.locator("tr", has_text=name).locator("button[name=user]").click()
    page.wait_for_selector(f"text=Courses of {name}")


def open_course(page, connected) -> None:
    page.click(f"a:has-text(\"{connected.course.title}\")")


def test_learner_and_instructor_pages_pass_axe(page, live_server, two_institutions, staff_user, catalog):
    north, _south = two_institutions
    connected = lms.connect(live_server.url, north, profile="canvas")
    quiz, reading, video, lab = catalog["quiz"], catalog["reading"], catalog["video"], catalog["lab"]
    instructor = connected.course.enrolments.get(role=Role.INSTRUCTOR).user.name
    learner = connected.students[0].name

    # The instructor places activities; the picker's select-all, search and kept values on the way.
    act_as(page, live_server, instructor)
    open_course(page, connected)
    page.click("text=Add activity from tool")
    page.wait_for_selector("#picker")
    assert_accessible(page, "picker")
    page.check("label:has-text('Select all in Section 1: Ports') input")
    ticked = page.locator("#items-1 input[name=activity]:checked").count()
    assert ticked == 4  # the header and its three items
    assert page.locator("#items-2 input[name=activity]:checked").count() == 0
    page.fill("#activity-search", "lab")
    assert page.locator(f"input[name=activity][value='{lab.pk}']").is_visible()
    assert not page.locator(f"input[name=activity][value='{quiz.pk}']").is_visible()
    page.wait_for_selector("#search-count:has-text('1 activity matches')")
    page.check(f"input[name=activity][value='{lab.pk}']")
    page.fill("#activity-search", "")
    page.fill(f"input[name=points-{quiz.pk}]", "25")
    page.fill(f"input[name=points-{reading.pk}]", "0")
    page.fill(f"input[name=points-{lab.pk}]", "0")
    page.click("text=Add to course")
    page.wait_for_selector("#pick-error")
    assert page.evaluate("() => document.activeElement.id") == "pick-error"  # the alert receives focus
    assert page.locator("#pick-error li").count() == 2
    assert page.input_value(f"input[name=points-{quiz.pk}]") == "25"  # kept
    assert page.locator("#items-1 input[name=activity]:checked").count() == 4
    assert page.is_checked(f"input[name=activity][value='{lab.pk}']")
    assert_accessible(page, "picker with errors")
    page.set_viewport_size({"width": 320, "height": 800})
    assert no_sideways_scroll(page), "the picker scrolls sideways at 320 px"
    page.screenshot(path=str(ARTIFACTS / "a11y-picker-320.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 1000})
    page.fill(f"input[name=points-{reading.pk}]", "5")
    page.fill(f"input[name=points-{lab.pk}]", "20")
    page.click("text=Add to course")
    page.wait_for_selector("#added")
    assert connected.course.line_items.filter(label=quiz.title, score_maximum=25).exists()

    # The instructor's pages, from the course navigation.
    page.goto(f"{live_server.url}/sandbox-lms/courses/{connected.course.pk}/")
    page.click("#course-navigation a:has-text('Grade sync')")
    page.wait_for_selector("#instructor-tools")
    assert_accessible(page, "instructor tools")
    page.click("#tool-schedule")
    page.wait_for_selector("#schedule")
    assert_accessible(page, "schedule")
    page.set_viewport_size({"width": 320, "height": 800})
    assert no_sideways_scroll(page), "the schedule page scrolls sideways at 320 px"
    page.screenshot(path=str(ARTIFACTS / "a11y-schedule-320.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 1000})
    page.fill(f"input[aria-label='Attempts allowed for {quiz.title}']", "0")
    page.click(f"button[aria-label='Save attempts allowed for {quiz.title}']")
    page.wait_for_selector("#error")
    assert page.evaluate("() => document.activeElement.id") == "error"
    assert_accessible(page, "schedule with an error")

    # A learner: quiz (intro, questions, result), reading, video.
    act_as(page, live_server, learner)
    open_course(page, connected)
    page.locator("tr", has_text=quiz.title).locator("text=Launch").click()
    page.wait_for_selector("button:has-text('Start')")
    assert_accessible(page, "quiz intro")
    page.click("button:has-text('Start')")
    page.wait_for_selector("text=Submit answers")
    assert_accessible(page, "quiz questions")
    radios = page.locator("input[type=radio]")
    radios.nth(1).check()
    radios.nth(3).check()
    page.click("text=Submit answers")
    page.wait_for_selector("#grade-sync")
    assert_accessible(page, "quiz result")
    assert page.locator("#back-to-course").count() == 1
    for activity, name in ((reading, "reading"), (video, "video")):
        act_as(page, live_server, learner)
        open_course(page, connected)
        page.locator("tr", has_text=activity.title).locator("text=Launch").click()
        page.wait_for_selector("#timer-announce")
        assert_accessible(page, name)
    assert page.locator("video track[kind=captions][default]").count() == 1

    # The instructor's grade sync, with the learner's grade in it.
    act_as(page, live_server, instructor)
    open_course(page, connected)
    page.click("#course-navigation a:has-text('Grade sync')")
    page.click("#tool-grade-sync")
    page.wait_for_selector("#grade-sync")
    assert_accessible(page, "grade sync")

    assert set(checked) >= {"picker", "picker with errors", "instructor tools", "schedule", "schedule with an error",
                            "quiz intro", "quiz questions", "quiz result", "reading", "video", "grade sync"}, checked


def test_support_pages_pass_axe(page, live_server, two_institutions, staff_user):
    """The why page, sync health, the resync form and a job page; every violation is listed at the end."""
    from tests.test_browser import outbox_rows

    north, _south = two_institutions
    course = CourseFactory(institution=north)
    delivery = outbox_rows(course, [(DeliveryStatus.SENT, 1), (DeliveryStatus.REFUSED, 2)])[1]
    job = ResyncJob.objects.create(institution=north, course=course, status=ResyncJobStatus.DONE, estimated=2, planned=2,
                                   sent=1, refused=1, started_at=timezone.now(), finished_at=timezone.now(),
                                   requested_by_name="support")
    log_in(page, live_server, staff_user, SUPPORT)
    found = {}
    for name, url in [
        ("why page", reverse("gradesync_why_delivery", args=[delivery.pk])),
        ("sync health", reverse("gradesync_health")),
        ("resync form", reverse("admin:gradesync_resyncjob_resync")),
        ("resync job", reverse("admin:gradesync_resyncjob_change", args=[job.pk])),
    ]:
        page.goto(live_server.url + url)
        try:
            assert_accessible(page, name)
        except AssertionError as failure:
            found[name] = str(failure)
    assert not found, "\n\n".join(found.values())

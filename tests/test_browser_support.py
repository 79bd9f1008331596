"""The support desk in the browser (#14): a learner found by part of their email from the Course page and resynced;
a grade policy change that resyncs by default, watched to Done; Read-only offered nothing it cannot finish."""
from __future__ import annotations

import datetime
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from gradesync.models import Delivery, DeliveryStatus, ResyncJob, ResyncJobStatus, Result
from institutions.models import GradePolicy
from institutions.roles import READ_ONLY, SUPPORT
from tests.browser import ARTIFACTS, browser_marks, log_in, page, staff_roles  # noqa: F401 (fixtures)
from tests.courseware_factories import LtiUserFactory
from tests.factories import ContextFactory, CourseFactory, OwnedDeploymentFactory

pytestmark = browser_marks


def course_with_grades(institution, title: str, context_id: str, learners: list[dict]):
    deployment = OwnedDeploymentFactory(institution=institution).deployment
    course = CourseFactory(institution=institution, deployment=deployment, title=title,
                           context=ContextFactory(deployment=deployment, id_on_platform=context_id, title=title))
    users = []
    for index, fields in enumerate(learners):
        user = LtiUserFactory(registration=deployment.registration, **fields)
        result = Result.objects.create(source_ref=f"browser-desk-{course.pk}-{index}", lti_user=user, course=course,
                                       activity_key="101", activity_title="Quiz: ports and protocols", score=Decimal("0.8"),
                                       completed_at=timezone.now() - datetime.timedelta(hours=1), is_eligible=True)
        Delivery.objects.create(result=result, course=course, institution=institution, registration=deployment.registration,
                                deployment=deployment, lti_user=user, activity_key="101", score=Decimal("0.8"),
                                status=DeliveryStatus.SENT, recorded_at=timezone.now(), sent_at=timezone.now())
        users.append(user)
    return course, users


def pick(page, field: str, typed: str, option: str) -> None:
    """Open a select2 autocomplete, type, and choose the option with this text."""
    page.click(f"#id_{field} + .select2 .select2-selection")
    page.fill(".select2-container--open .select2-search__field", typed)
    page.locator(".select2-results__option", has_text=option).click()


def test_support_resyncs_a_learner_found_by_part_of_their_email_from_the_course_page(page, live_server, two_institutions,
                                                                                     staff_user, monkeypatch):
    monkeypatch.setattr("gradesync.resync.jobs._queue_job", lambda job_id, countdown=None: None)  # no LMS to send to
    north, south = two_institutions
    course, (ada, _grace) = course_with_grades(north, "Networking 101", "canvas-net-101", [
        {"sub": "canvas-4242", "name": "Ada Lovelace", "email": "ada.lovelace@north.example.edu"},
        {"sub": "canvas-7", "name": "Grace Hopper", "email": "grace@north.example.edu"},
    ])
    course_with_grades(south, "Networking 101 (South)", "south-net", [
        {"sub": "south-1", "name": "Bob Lovelace", "email": "bob.lovelace@south.example.edu"},
    ])
    log_in(page, live_server, staff_user, SUPPORT)
    page.goto(live_server.url + reverse("admin:institutions_course_change", args=[course.pk]))
    page.click("#resync-course")
    page.wait_for_selector("#resync-form")
    assert "Networking 101 (canvas-net-101)" in page.inner_text("#id_course + .select2")  # the course, by name
    page.click("#id_lti_user + .select2 .select2-selection")
    page.fill(".select2-container--open .select2-search__field", "lovelace@")
    options = page.locator(".select2-results__option", has_text="Lovelace")
    options.first.wait_for()
    assert options.all_inner_texts() == ["Ada Lovelace <ada.lovelace@north.example.edu> · canvas-4242"]  # never South's Bob
    page.screenshot(path=str(ARTIFACTS / "support-desk-learner-autocomplete.png"), full_page=True)
    options.first.click()
    page.click("#resync-form input[type=submit]")
    page.wait_for_selector("#resync-confirm")
    assert "learner Ada Lovelace" in page.inner_text("#resync-confirm")
    assert page.inner_text("#resync-count").startswith("1 grade will be sent again")
    page.click("#resync-confirm input[type=submit]")
    page.wait_for_selector("#resync-progress")
    job = ResyncJob.objects.get()
    assert (job.institution, job.course, job.lti_user, job.estimated) == (north, course, ada, 1)
    assert page.url.endswith(reverse("admin:gradesync_resyncjob_change", args=[job.pk]))


def test_a_policy_change_resyncs_the_affected_grades_by_default_and_the_job_is_watched_to_done(page, live_server, two_institutions,
                                                                                               staff_user):
    from playwright.sync_api import expect

    from tests.gradesync.test_resync import TwoQuizClassroom

    north, _south = two_institutions
    room = TwoQuizClassroom(live_server.url, north, "canvas")
    room.grade_all()  # 0.9 then 0.5 for every student and quiz: Highest sent 18 of 20 points
    log_in(page, live_server, staff_user, SUPPORT)
    page.goto(live_server.url + reverse("admin:institutions_institution_change", args=[north.pk]))
    page.click("text=Change grade policy")
    assert page.inner_text("#policy-changed") == "6"
    assert page.is_checked("input[name=resync_affected]")  # ticked because the preview counts some
    page.check(f"input[name=grade_policy][value={GradePolicy.MOST_RECENT}]")
    page.click("form input[type=submit].default")
    page.wait_for_selector("#resync-progress")
    expect(page.locator("#resync-status")).to_have_text("Done", timeout=20_000)
    assert page.locator("#resync-percent").inner_text() == "100" and page.locator("#resync-sent").inner_text() == "6"
    page.screenshot(path=str(ARTIFACTS / "support-desk-policy-resync-done.png"), full_page=True)
    job = ResyncJob.objects.get()
    assert (job.status, job.only_changed, job.sent) == (ResyncJobStatus.DONE, True, 6)
    for which in (room.first, room.second):  # Most Recent's 0.5 of 20 points is now in the LMS
        assert [room.cell(which, s) for s in room.connected.students] == [pytest.approx(10.0)] * 3
    # Nothing is left differing: the institution page says nothing more about it.
    page.goto(live_server.url + reverse("admin:institutions_institution_change", args=[north.pk]))
    assert page.locator("#policy-drift").count() == 0


def test_read_only_is_offered_nothing_it_cannot_finish_on_the_course_delivery_and_institution_pages(page, live_server,
                                                                                                   two_institutions, staff_user):
    north, _south = two_institutions
    course, (ada,) = course_with_grades(north, "Networking 101", "canvas-net-101", [
        {"sub": "canvas-4242", "name": "Ada Lovelace", "email": "ada.lovelace@north.example.edu"}])
    delivery = Delivery.objects.get(lti_user=ada)
    log_in(page, live_server, staff_user, READ_ONLY)
    pages = {
        "course": reverse("admin:institutions_course_change", args=[course.pk]),
        "delivery": reverse("admin:gradesync_delivery_change", args=[delivery.pk]),
        "deliveries": reverse("admin:gradesync_delivery_changelist"),
        "institution": reverse("admin:institutions_institution_change", args=[north.pk]),
    }
    for name, url in pages.items():
        page.goto(live_server.url + url)
        offered = page.locator("#content a, #content input[type=submit], #content button")
        texts = [text.strip() for text in offered.all_inner_texts()]
        assert not [text for text in texts if text.startswith(("Resync", "Change grade policy"))], (name, texts)
        assert page.locator("a[href*='/resyncjob/resync/']").count() == 0, name
        assert page.locator("select[name=action]").count() == 0, name  # no list actions
        assert page.locator(".submit-row input[type=submit]").count() == 0, name  # nothing to save
        # Every link it is offered on top of the page opens (none ends on the 403 page).
        for link in page.locator("#content-main .object-tools a").all():
            href = live_server.url + link.get_attribute("href")
            assert page.request.get(href).status == 200, (name, href)
        page.screenshot(path=str(ARTIFACTS / f"support-desk-read-only-{name}.png"), full_page=True)

"""Headless Chromium checks of admin pages that draw or poll: the sync health chart, the resync progress bar."""
from __future__ import annotations

import datetime
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from gradesync import resync
from gradesync.models import Delivery, DeliveryStatus, ResyncJob, ResyncJobStatus, Result
from institutions.roles import READ_ONLY, SUPPORT
from tests.courseware_factories import LtiUserFactory
from tests.browser import ARTIFACTS, browser_marks, log_in, page, staff_roles  # noqa: F401 (fixtures)
from tests.factories import CourseFactory

pytestmark = browser_marks


def outbox_rows(course, specs) -> list[Delivery]:
    rows = []
    now = timezone.now()
    for index, (status, hours_ago) in enumerate(specs):
        user = LtiUserFactory(registration=course.deployment.registration)
        result = Result.objects.create(source_ref=f"browser-{course.pk}-{index}", lti_user=user, course=course, activity_key="a",
                                       score=Decimal("0.5"), completed_at=now, is_eligible=True)
        recorded = now - datetime.timedelta(hours=hours_ago)
        row = Delivery.objects.create(
            result=result, course=course, institution=course.institution, registration=course.deployment.registration,
            deployment=course.deployment, lti_user=user, activity_key="a", score=Decimal("0.5"), status=status,
            recorded_at=recorded, last_status_code=422 if status == DeliveryStatus.REFUSED else None,
            last_message="Canvas refused: Allowed Attempts reached. Raise Allowed Attempts in Canvas, then resync this grade."
            if status == DeliveryStatus.REFUSED else "",
        )
        Delivery.objects.filter(pk=row.pk).update(updated_at=recorded,
                                                  sent_at=recorded + datetime.timedelta(seconds=1) if status == DeliveryStatus.SENT else None)
        rows.append(row)
    return rows


def test_the_sync_health_chart_renders(page, live_server, two_institutions, staff_user):
    north, south = two_institutions
    outbox_rows(CourseFactory(institution=north), [(DeliveryStatus.SENT, h) for h in (1, 1, 2, 5, 5, 5, 12)]
                + [(DeliveryStatus.REFUSED, 2), (DeliveryStatus.DEAD, 5), (DeliveryStatus.PENDING, 0.1)])
    outbox_rows(CourseFactory(institution=south), [(DeliveryStatus.SENT, 3), (DeliveryStatus.REFUSED, 3)])
    log_in(page, live_server, staff_user, READ_ONLY)
    page.click("text=Grade sync: health")
    chart = page.wait_for_selector("svg#health-chart")
    box = chart.bounding_box()
    assert box["width"] > 600 and box["height"] > 100
    bars = page.locator("svg#health-chart a.bar rect.sent")
    assert bars.count() == 24
    heights = [float(bars.nth(i).get_attribute("height")) for i in range(24)]
    assert max(heights) > 50  # the busiest hour fills most of the chart
    failed = page.locator("svg#health-chart rect.failed")
    assert failed.count() == 3 and all(failed.nth(i).bounding_box()["height"] > 1 for i in range(3))  # hours 2, 3 and 5
    assert page.locator("#counts-24h [data-state=sent] .n").inner_text() == "8"
    page.screenshot(path=str(ARTIFACTS / "sync-health.png"), full_page=True)
    # A bar is a link to the deliveries of that hour.
    page.locator("svg#health-chart a.bar-failed").first.click()
    page.wait_for_selector("#result_list")
    assert page.locator("#result_list tbody tr").count() >= 1
    page.screenshot(path=str(ARTIFACTS / "sync-health-drilldown.png"), full_page=True)
    # Per institution: the select reloads the page for that institution.
    page.goto(live_server.url + reverse("gradesync_health"))
    page.select_option("#health-institution", label="South University")
    page.wait_for_url("**institution=*")
    assert page.locator("#counts-24h [data-state=refused] .n").inner_text() == "1"
    page.screenshot(path=str(ARTIFACTS / "sync-health-south.png"), full_page=True)


def test_the_resync_progress_bar_follows_the_job(page, live_server, two_institutions, staff_user):
    from playwright.sync_api import expect

    north, _south = two_institutions
    course = CourseFactory(institution=north)
    rows = outbox_rows(course, [(DeliveryStatus.PENDING, 0.01)] * 4)
    job = ResyncJob.objects.create(institution=north, course=course, status=ResyncJobStatus.RUNNING, estimated=4, planned=4,
                                   started_at=timezone.now(), planned_at=timezone.now(), requested_by_name="support")
    Delivery.objects.filter(pk__in=[r.pk for r in rows]).update(resync_job=job, is_resync=True)
    Delivery.objects.filter(pk=rows[0].pk).update(status=DeliveryStatus.SENT)
    resync.count_progress(job.pk)  # the sender recounts a job as its grades land; pages only read
    log_in(page, live_server, staff_user, SUPPORT)
    page.goto(live_server.url + reverse("admin:gradesync_resyncjob_change", args=[job.pk]))
    page.wait_for_selector("#resync-progress")
    assert page.locator("#resync-percent").inner_text() == "25"
    assert page.locator("#resync-status").inner_text() == "Running"
    bar = page.locator("#resync-bar")
    track = bar.locator("xpath=..").bounding_box()["width"]
    assert bar.bounding_box()["width"] == pytest.approx(track * 0.25, abs=3)
    page.screenshot(path=str(ARTIFACTS / "resync-progress-running.png"), full_page=True)
    # The worker finishes: the page polls the JSON endpoint and fills the bar without a reload.
    Delivery.objects.filter(pk__in=[r.pk for r in rows[1:3]]).update(status=DeliveryStatus.SENT)
    Delivery.objects.filter(pk=rows[3].pk).update(status=DeliveryStatus.REFUSED)
    resync.count_progress(job.pk)
    # A locator wait, not wait_for_function: the admin's Content-Security-Policy forbids eval.
    expect(page.locator("#resync-status")).to_have_text("Done", timeout=10_000)
    assert page.locator("#resync-percent").inner_text() == "100"
    assert page.locator("#resync-sent").inner_text() == "3" and page.locator("#resync-refused").inner_text() == "1"
    assert bar.bounding_box()["width"] == pytest.approx(track, abs=3)
    assert page.locator("#resync-cancel").count() == 0  # nothing left to cancel
    page.screenshot(path=str(ARTIFACTS / "resync-progress-done.png"), full_page=True)

"""In the browser: a staff member's admin shows times in the zone their browser is in (reported once, with the
sign-in form), to the second, with UTC on hover — and the header names the zone (#14 item 6)."""
from __future__ import annotations

import datetime

from django.urls import reverse

from gradesync.models import ResyncJob
from institutions.roles import READ_ONLY

from .browser import browser_marks, log_in, page, staff_roles  # noqa: F401 - fixtures

pytestmark = browser_marks


def test_a_browser_in_tokyo_sees_tokyo_time_with_utc_on_hover(page, live_server, two_institutions, staff_user):
    job = ResyncJob.objects.create(institution=two_institutions[0], requested_by_name="support-staff")
    ResyncJob.objects.filter(pk=job.pk).update(created_at=datetime.datetime(2025, 3, 4, 15, 5, 9, tzinfo=datetime.timezone.utc))
    tokyo = page.context.browser.new_context(timezone_id="Asia/Tokyo", viewport={"width": 1280, "height": 1000})
    in_tokyo = tokyo.new_page()

    log_in(in_tokyo, live_server, staff_user, READ_ONLY)
    in_tokyo.goto(live_server.url + reverse("admin:gradesync_resyncjob_change", args=[job.pk]))

    created = in_tokyo.locator('time[datetime="2025-03-04T15:05:09Z"]')
    assert created.inner_text() == "2025-03-05 00:05:09 JST"
    assert created.get_attribute("title") == "2025-03-04 15:05:09 UTC"
    assert in_tokyo.text_content("#time-zone-link") == "Time zone: Asia/Tokyo"  # (shown in capitals by the admin's CSS)
    tokyo.close()

"""Staff see times in their own zone, to the second, with UTC on hover (#14 item 6): the zone they chose,
else the one their browser reported at sign-in, else settings.TIME_ZONE; zone names from a browser are checked."""
from __future__ import annotations

import datetime

import pytest
from django.urls import reverse

from gradesync.models import ResyncJob
from institutions.roles import READ_ONLY, SUPPORT
from staff.models import StaffPreference
from staff.time_zones import BROWSER_SESSION_KEY
from tests.conftest import sign_in_verified

pytestmark = pytest.mark.django_db

CREATED = datetime.datetime(2025, 3, 4, 15, 5, 9, tzinfo=datetime.timezone.utc)
IN_UTC = 'title="2025-03-04 15:05:09 UTC"'


@pytest.fixture
def job_page(two_institutions):
    job = ResyncJob.objects.create(institution=two_institutions[0], requested_by_name="support-staff")
    ResyncJob.objects.filter(pk=job.pk).update(created_at=CREATED)
    return reverse("admin:gradesync_resyncjob_change", args=[job.pk])


def created_shown(client, job_page: str) -> str:
    """The job's "created at" as the page shows it: <time datetime=… title="… UTC">local</time>."""
    body = client.get(job_page).content.decode()
    start = body.index('<time datetime="2025-03-04T15:05:09Z"')
    return body[start:body.index("</time>", start) + len("</time>")]


def test_a_staff_members_chosen_zone_with_utc_on_hover(job_page, staff_user, client):
    user = staff_user(READ_ONLY)
    StaffPreference.objects.create(user=user, time_zone="Asia/Tokyo")
    sign_in_verified(client, user)
    assert created_shown(client, job_page) == (
        f'<time datetime="2025-03-04T15:05:09Z" {IN_UTC}>2025-03-05 00:05:09 JST</time>'
    )
    # Every admin page's header says which zone, and leads to the page that changes it.
    header = client.get(reverse("admin:index")).content.decode()
    assert f'href="{reverse("staff_time_zone")}" id="time-zone-link"' in header and "Time zone: Asia/Tokyo</a>" in header


def test_without_a_choice_the_default_zone(job_page, client_for):
    assert ">2025-03-04 15:05:09 UTC</time>" in created_shown(client_for(SUPPORT), job_page)


def test_the_browsers_zone_reported_at_sign_in_is_the_default(job_page, staff_user, client):
    user = staff_user(SUPPORT)
    signed_in = client.post(reverse("admin:login"), {"username": user.username, "password": "pw",
                                                     "browser_time_zone": "America/New_York"})
    assert signed_in.status_code == 302  # on to the second factor
    assert client.session[BROWSER_SESSION_KEY] == "America/New_York"
    sign_in_verified(client, user)  # the code step (tested in test_sign_in); the session keeps the zone
    assert ">2025-03-04 10:05:09 EST</time>" in created_shown(client, job_page)
    # A zone chosen on the page wins over the browser's.
    client.post(reverse("staff_time_zone"), {"time_zone": "Europe/Paris"})
    assert ">2025-03-04 16:05:09 CET</time>" in created_shown(client, job_page)


@pytest.mark.parametrize("hostile", ["../../../../etc/passwd", "Mars/Olympus_Mons", "UTC; DROP TABLE", "x" * 200, "/usr"])
def test_a_browser_zone_that_is_not_a_zone_is_not_kept(hostile, job_page, staff_user, client):
    user = staff_user(SUPPORT)
    client.post(reverse("admin:login"), {"username": user.username, "password": "pw", "browser_time_zone": hostile})
    assert BROWSER_SESSION_KEY not in client.session
    sign_in_verified(client, user)
    assert ">2025-03-04 15:05:09 UTC</time>" in created_shown(client, job_page)


def test_staff_choose_their_zone_on_their_own_page(job_page, client_for):
    client = client_for(READ_ONLY)  # every staff member, whatever their role
    page = client.get(reverse("staff_time_zone"))
    assert page.status_code == 200 and '<option value="Europe/Paris">' in page.content.decode()

    saved = client.post(reverse("staff_time_zone"), {"time_zone": "Europe/Paris"}, follow=True)

    assert "Times are now shown in Europe/Paris." in saved.content.decode()
    assert StaffPreference.objects.get(user=client.user).time_zone == "Europe/Paris"
    assert ">2025-03-04 16:05:09 CET</time>" in created_shown(client, job_page)
    # Back to the default: the first choice.
    client.post(reverse("staff_time_zone"), {"time_zone": ""})
    assert ">2025-03-04 15:05:09 UTC</time>" in created_shown(client, job_page)


def test_a_name_that_is_not_a_zone_is_refused_and_nothing_kept(client_for):
    client = client_for(SUPPORT)
    refused = client.post(reverse("staff_time_zone"), {"time_zone": "Mars/Olympus_Mons"})
    assert refused.status_code == 400 and "That is not a time zone name" in refused.content.decode()
    assert not StaffPreference.objects.exists()


def test_the_page_is_for_signed_in_staff_only(client, django_user_model):
    assert reverse("admin:login") in client.get(reverse("staff_time_zone")).url
    client.force_login(django_user_model.objects.create_user("learner", password="pw"))
    assert reverse("admin:login") in client.get(reverse("staff_time_zone")).url

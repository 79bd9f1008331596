"""Staff sign in to the admin with a password and a second factor; failures lock out; idle sessions end."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from axes.models import AccessAttempt
from django.conf import settings
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice

from courseware.sessions import LAUNCH_SESSION_KEY
from institutions.roles import INTEGRATION, READ_ONLY, SUPPORT
from staff import middleware
from tests.conftest import sign_in_verified
from tests.courseware_factories import ActivityFactory, ActivityLinkFactory, LaunchFactory
from tests.factories import CourseFactory

pytestmark = pytest.mark.django_db

KINDS = [SUPPORT, INTEGRATION, READ_ONLY, "superuser"]
LOCKED = "Sign-in is locked for this account from this address after 5 failed attempts"


@pytest.fixture
def staff_member(staff_user, django_user_model):
    """staff_member(kind, enrolled=True): a staff user of a role (or a superuser), password "pw"."""

    def make(kind: str, enrolled: bool = True):
        if kind == "superuser":
            user = django_user_model.objects.create_superuser(username="root", password="pw")
        else:
            user = staff_user(kind)
        if enrolled:
            TOTPDevice.objects.create(user=user, name="phone", confirmed=True)
        return user

    return make


def admin_pages() -> list[str]:
    return [
        reverse("admin:index"),
        reverse("admin:institutions_institution_changelist"),
        reverse("admin:gradesync_delivery_changelist"),
        reverse("gradesync_health"),
        reverse("gradesync_why"),
    ]


def code(device: TOTPDevice, *, wrong: bool = False) -> str:
    device.refresh_from_db()
    value = totp(device.bin_key, device.step, device.t0, device.digits, device.drift)
    return f"{(value + 1) % 10 ** 6 if wrong else value:06d}"


def password_login(client, username: str, password: str = "pw", next_url: str = ""):
    data = {"username": username, "password": password}
    if next_url:
        data["next"] = next_url
    return client.post(reverse("admin:login") + (f"?next={next_url}" if next_url else ""), data)


def send_code(client, value: str, url: str = ""):
    return client.post(url or reverse("admin:second_factor"), {"code": value})


def allow_next_code(device: TOTPDevice) -> None:
    """Skip the device's back-off (1 s, 2 s, 4 s … after wrong codes) so a test need not sleep."""
    TOTPDevice.objects.filter(pk=device.pk).update(throttling_failure_timestamp=None, throttling_failure_count=0)


@pytest.mark.parametrize("kind", KINDS)
def test_a_password_alone_reaches_no_admin_page(client, staff_member, kind):
    user = staff_member(kind)

    signed_in = password_login(client, user.username)

    assert signed_in.status_code == 302 and signed_in["Location"].startswith(reverse("admin:second_factor"))
    for url in admin_pages():
        page = client.get(url, follow=True)
        assert page.redirect_chain, url
        assert page.request["PATH_INFO"] == reverse("admin:second_factor"), url
        assert "Enter the 6-digit code" in page.content.decode()


@pytest.mark.parametrize("kind", KINDS)
def test_a_valid_code_opens_the_admin_and_a_wrong_one_does_not(client, staff_member, kind):
    user = staff_member(kind)
    device = user.totpdevice_set.get()
    password_login(client, user.username)

    refused = send_code(client, code(device, wrong=True))
    assert refused.status_code == 200
    assert "That code is not right" in refused.content.decode()
    assert client.get(reverse("admin:index")).status_code == 302

    allow_next_code(device)
    accepted = send_code(client, code(device))
    assert accepted.status_code == 302 and accepted["Location"] == reverse("admin:index")
    for url in admin_pages():
        assert client.get(url).status_code == 200, url


def test_the_code_step_returns_to_the_page_first_asked_for(client, staff_member):
    user = staff_member(SUPPORT)
    wanted = reverse("admin:institutions_course_changelist")
    assert client.get(wanted)["Location"] == f"{reverse('admin:login')}?next={wanted}"

    to_code = password_login(client, user.username, next_url=wanted)
    done = send_code(client, code(user.totpdevice_set.get()), url=to_code["Location"])

    assert done["Location"] == wanted


def test_a_wrong_code_backs_off_the_device(client, staff_member):
    user = staff_member(READ_ONLY)
    device = user.totpdevice_set.get()
    password_login(client, user.username)
    send_code(client, code(device, wrong=True))

    too_soon = send_code(client, code(device))

    assert "Too many wrong codes in a row" in too_soon.content.decode()
    assert client.get(reverse("admin:index")).status_code == 302


def test_a_code_is_used_once(client, staff_member):
    user = staff_member(SUPPORT)
    device = user.totpdevice_set.get()
    password_login(client, user.username)
    used = code(device)
    send_code(client, used)
    client.post(reverse("admin:logout"))

    password_login(client, user.username)
    replayed = send_code(client, used)

    assert "That code is not right" in replayed.content.decode()


@pytest.mark.parametrize("kind", KINDS)
def test_the_first_sign_in_enrols_an_authenticator_with_a_qr_code(client, staff_member, kind):
    user = staff_member(kind, enrolled=False)

    page = client.get(password_login(client, user.username)["Location"], follow=True)

    assert page.request["PATH_INFO"] == reverse("admin:second_factor_enrol")
    html = page.content.decode()
    device = TOTPDevice.objects.get(user=user)
    assert not device.confirmed
    assert '<div class="qr" id="otp-qr"' in html and "<svg" in html and "<path" in html
    secret = page.context["secret"]
    assert secret.replace(" ", "") in device.config_url and secret in html
    assert "otpauth://" not in html and "https://" not in html.split('id="otp-qr"')[1].split("</div>")[0]

    wrong = send_code(client, code(device, wrong=True), url=reverse("admin:second_factor_enrol"))
    assert "That code is not right" in wrong.content.decode()
    device.refresh_from_db()
    assert not device.confirmed
    assert client.get(reverse("admin:index")).status_code == 302

    allow_next_code(device)
    enrolled = send_code(client, code(device), url=reverse("admin:second_factor_enrol"))
    assert enrolled.status_code == 200
    device.refresh_from_db()
    assert device.confirmed
    assert len(enrolled.context["codes"]) == 10 and all(c in enrolled.content.decode() for c in enrolled.context["codes"])
    assert client.get(reverse("admin:index")).status_code == 200


def test_a_backup_code_signs_in_once_instead_of_the_app(client, staff_member):
    user = staff_member(SUPPORT, enrolled=False)
    password_login(client, user.username)
    client.get(reverse("admin:second_factor_enrol"))
    device = TOTPDevice.objects.get(user=user)
    backup = send_code(client, code(device), url=reverse("admin:second_factor_enrol")).context["codes"][0]
    client.post(reverse("admin:logout"))

    password_login(client, user.username)
    assert send_code(client, backup.upper())["Location"] == reverse("admin:index")
    assert client.get(reverse("admin:index")).status_code == 200
    client.post(reverse("admin:logout"))

    password_login(client, user.username)
    reused = send_code(client, backup)
    assert "That code is not right" in reused.content.decode()
    assert client.get(reverse("admin:index")).status_code == 302


def test_a_password_never_enrols_a_second_authenticator(client, staff_member):
    user = staff_member(INTEGRATION)
    password_login(client, user.username)

    page = client.get(reverse("admin:second_factor_enrol"), follow=True)

    assert page.request["PATH_INFO"] == reverse("admin:second_factor")
    assert TOTPDevice.objects.filter(user=user).count() == 1


def test_signing_out_clears_the_second_factor(client, staff_member):
    user = staff_member(SUPPORT)
    device = user.totpdevice_set.get()
    password_login(client, user.username)
    send_code(client, code(device))
    assert client.get(reverse("admin:index")).status_code == 200

    client.post(reverse("admin:logout"))
    password_login(client, user.username)

    assert client.get(reverse("admin:index"), follow=True).request["PATH_INFO"] == reverse("admin:second_factor")


def test_the_code_step_can_be_left_for_another_account(client, staff_member):
    user = staff_member(SUPPORT)
    password_login(client, user.username)

    client.post(reverse("admin:second_factor"), {"cancel": "1"})

    assert client.get(reverse("admin:login")).status_code == 200
    assert "_auth_user_id" not in client.session


def test_five_wrong_passwords_lock_the_username_out_for_the_cool_off(client, staff_member):
    user = staff_member(SUPPORT)
    other = staff_member(READ_ONLY)
    for _ in range(4):
        assert password_login(client, user.username, "wrong").status_code == 200
    locked = password_login(client, user.username, "wrong")
    assert locked.status_code == 429
    assert LOCKED in locked.content.decode() and "Try again in 15 minutes" in locked.content.decode()
    assert 'id="site-name"' in locked.content.decode()  # in the admin layout

    right_password = password_login(client, user.username)
    assert right_password.status_code == 429
    assert "_auth_user_id" not in client.session
    assert password_login(client, other.username).status_code == 302  # another username from the same address

    AccessAttempt.objects.update(attempt_time=timezone.now() - settings.AXES_COOLOFF_TIME - timezone.timedelta(minutes=1))
    client.post(reverse("admin:logout"))
    after_cool_off = password_login(client, user.username)
    assert after_cool_off.status_code == 302 and after_cool_off["Location"].startswith(reverse("admin:second_factor"))


def test_wrong_codes_count_towards_the_lockout(client, staff_member):
    user = staff_member(INTEGRATION)
    device = user.totpdevice_set.get()
    password_login(client, user.username, "wrong")
    password_login(client, user.username)
    for _ in range(3):
        assert "That code is not right" in send_code(client, code(device, wrong=True)).content.decode()
        allow_next_code(device)

    locked = send_code(client, code(device, wrong=True))

    assert locked.status_code == 429 and LOCKED in locked.content.decode()
    assert "_auth_user_id" not in client.session  # signed out
    assert password_login(client, user.username).status_code == 429


def test_a_complete_sign_in_clears_earlier_failures(client, staff_member):
    user = staff_member(SUPPORT)
    for _ in range(4):
        password_login(client, user.username, "wrong")
    password_login(client, user.username)
    send_code(client, code(user.totpdevice_set.get()))
    client.post(reverse("admin:logout"))

    password_login(client, user.username, "wrong")
    assert password_login(client, user.username).status_code == 302


def test_an_idle_admin_session_ends_but_a_learners_launch_session_does_not(client, staff_member, monkeypatch):
    from django.test import Client

    staff = sign_in_verified(client, staff_member(READ_ONLY))
    learner = Client()
    link = ActivityLinkFactory(course=CourseFactory(), activity=ActivityFactory(slug="idle-reading"))
    session = learner.session
    session[LAUNCH_SESSION_KEY] = LaunchFactory(course=link.course).pk
    session.save()
    player = reverse("courseware:play", kwargs={"link_id": link.pk})
    assert staff.get(reverse("admin:index")).status_code == 200
    assert learner.get(player).status_code == 200

    started = middleware._now()
    monkeypatch.setattr(middleware, "_now", lambda: started + (settings.ADMIN_IDLE_TIMEOUT_MINUTES - 1) * 60)
    assert staff.get(reverse("admin:index")).status_code == 200  # 29 minutes: still signed in
    monkeypatch.setattr(middleware, "_now", lambda: started + (2 * settings.ADMIN_IDLE_TIMEOUT_MINUTES + 1) * 60)

    expired = staff.get(reverse("admin:institutions_course_changelist"), follow=True)
    assert expired.request["PATH_INFO"] == reverse("admin:login")
    assert "You were signed out after 30 minutes without activity" in expired.content.decode()
    assert staff.get(reverse("admin:index")).status_code == 302
    assert learner.get(player).status_code == 200
    assert learner.session[LAUNCH_SESSION_KEY]


@pytest.mark.parametrize(
    ("role", "url_name", "needed"),
    [
        (READ_ONLY, "admin:institutions_institution_add", "This needs the Integration role."),
        (SUPPORT, "admin:lti_tool_ltiregistration_add", "This needs the Integration role."),
        (INTEGRATION, "admin:institutions_course_changelist", None),  # every role reads
        (READ_ONLY, "admin:auth_user_add", "This needs an administrator (superuser) account."),
    ],
)
def test_the_403_page_names_the_role_needed(client_for, role, url_name, needed):
    client = client_for(role)

    page = client.get(reverse(url_name))

    if needed is None:
        assert page.status_code == 200
        return
    assert page.status_code == 403
    html = page.content.decode()
    assert f"{needed} You are signed in as {client.user.username} ({role}). Ask an administrator." in html
    assert 'id="site-name"' in html and 'id="user-tools"' in html  # the admin layout, signed in


def test_the_403_page_names_the_support_role_for_a_course_change(client_for):
    from tests.factories import CourseFactory as Courses

    client = client_for(INTEGRATION)
    course = Courses()
    page = client.post(reverse("admin:institutions_course_change", args=[course.pk]), {})

    assert page.status_code == 403
    assert "This needs the Support role." in page.content.decode()


@pytest.mark.parametrize("role", [READ_ONLY, INTEGRATION])
def test_the_403_page_names_the_support_role_for_a_resync_and_a_grade_policy(client_for, two_institutions, role):
    client = client_for(role)
    north, _ = two_institutions

    for url in [reverse("admin:gradesync_resyncjob_resync"), reverse("admin:institutions_institution_grade_policy", args=[north.pk])]:
        page = client.get(url)
        assert page.status_code == 403, url
        assert "This needs the Support role." in page.content.decode(), url


def test_no_authenticator_key_is_shown_in_the_admin(admin_client, staff_member):
    device = staff_member(SUPPORT).totpdevice_set.get()

    page = admin_client.get(reverse("admin:otp_totp_totpdevice_change", args=[device.pk]))

    assert page.status_code == 200
    assert device.key not in page.content.decode() and "qrcode" not in page.content.decode()


def test_a_staff_member_without_a_role_is_told_which_roles_read_the_support_pages(client_for):
    page = client_for(None).get(reverse("gradesync_health"))

    assert page.status_code == 403
    assert "This needs the Read-only, Integration or Support role." in page.content.decode()
    assert "(no staff role)" in page.content.decode()


def test_a_403_outside_the_admin_keeps_its_own_page(client, django_user_model):
    link = ActivityLinkFactory(course=CourseFactory(), activity=ActivityFactory(slug="refused-reading"))
    client.force_login(django_user_model.objects.create_user(username="visitor", password="pw"))

    page = client.get(reverse("courseware:play", kwargs={"link_id": link.pk}))

    assert page.status_code == 403 and 'id="permission-denied"' not in page.content.decode()


@override_settings(DEMO_SKIP_2FA=True)
def test_the_demo_setting_lets_a_password_alone_in(client, staff_member):
    user = staff_member(SUPPORT, enrolled=False)

    assert "DEMO_SKIP_2FA" in client.get(reverse("admin:login")).content.decode()
    assert password_login(client, user.username)["Location"] == reverse("admin:index")
    assert client.get(reverse("admin:index")).status_code == 200


def test_the_demo_setting_is_refused_with_debug_off():
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", "DEBUG": "False", "DEMO_SKIP_2FA": "True",
           "SECRET_KEY": "x" * 50, "ALLOWED_HOSTS": "localhost"}

    check = subprocess.run([sys.executable, "manage.py", "check"], cwd=settings.BASE_DIR, env=env,
                           capture_output=True, text=True, timeout=120)

    assert check.returncode != 0
    assert "DEMO_SKIP_2FA=True is for the local demo only: it is refused when DEBUG is off." in check.stderr

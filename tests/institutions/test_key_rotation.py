"""The tool's signing key: one from the first `migrate`, and a rotation no LMS notices.

Over real HTTP with the sandbox LMS acting as a strict platform that caches our JWKS for 12 hours and
never refetches on an unknown kid: at every phase of a rotation (before, during the lead time, after
the switch, after the grace period) deep-linking responses and AGS token requests keep working.
Time moves with a fake clock shared by the tool's key rotation and the platform's cache.
"""
from __future__ import annotations

import datetime
import importlib
import io

import pytest
import requests
from django.apps import apps as global_apps
from django.contrib.auth.models import User
from django.core.cache import cache
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone
from lti_tool.models import Key

from courseware.models import Activity, ActivityKind
from gradesync import ags
from institutions import key_rotation
from institutions import keys as tool_keys
from institutions.key_rotation import start_rotation
from institutions.keys import fingerprint
from institutions.models import AuditEntry, KeyPhase, ToolKeyLifecycle
from institutions.roles import INTEGRATION, READ_ONLY, SUPPORT
from institutions.tasks import advance_key_rotation
from sandbox_lms import api
from sandbox_lms import platform as sandbox_platform
from tests import lms

HOUR = datetime.timedelta(hours=1)


class Clock:
    """`timezone`'s stand-in for the key rotation and the platform's JWKS cache: real time plus `offset`."""

    def __init__(self) -> None:
        self.offset = datetime.timedelta(0)

    def now(self) -> datetime.datetime:
        return timezone.now() + self.offset


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(tool_keys, "timezone", fake)
    monkeypatch.setattr(key_rotation, "timezone", fake)
    monkeypatch.setattr(sandbox_platform, "timezone", fake)
    return fake


def signing_keys() -> list[Key]:
    return [state.key for state in ToolKeyLifecycle.objects.filter(phase=KeyPhase.SIGNING).select_related("key")]


# --- A key from the first run -----------------------------------------------------------------------


@pytest.mark.django_db
def test_a_migrated_database_publishes_one_signing_key():
    (key,) = signing_keys()
    assert key.is_active
    assert Key.objects.as_jwks()["keys"][0]["kid"] == key.as_jwk()["kid"]


@pytest.mark.django_db
def test_the_migration_makes_exactly_one_key_on_an_empty_table_and_nothing_more_when_run_again():
    Key.objects.all().delete()
    migration = importlib.import_module("institutions.migrations.0006_tool_key_lifecycle")
    migration.first_signing_key(global_apps, None)
    migration.first_signing_key(global_apps, None)
    assert Key.objects.count() == 1 and len(signing_keys()) == 1
    call_command("migrate", verbosity=0)  # the post_migrate hook: still the same single key
    assert Key.objects.count() == 1


@pytest.mark.django_db
def test_the_admin_rotates_with_no_key_present(admin_client):
    Key.objects.all().delete()
    changelist = admin_client.get(reverse("admin:lti_tool_key_changelist"))
    assert 'value="publish_new_key"' in changelist.content.decode()  # the action is offered on an empty list
    response = admin_client.post(reverse("admin:lti_tool_key_changelist"), {"action": "publish_new_key", "index": 0})
    assert response.status_code == 302
    assert len(signing_keys()) == 1 and Key.objects.active().count() == 2  # a signing key, and the next one


@pytest.mark.django_db
def test_the_database_refuses_a_second_signing_key():
    from django.db import IntegrityError, transaction

    other = Key.objects.generate()
    with pytest.raises(IntegrityError), transaction.atomic():
        ToolKeyLifecycle.objects.create(key=other, phase=KeyPhase.SIGNING, published_at=timezone.now())


# --- Rotation over HTTP against a platform that caches our JWKS ------------------------------------------


@pytest.fixture
def strict_platform(live_server, two_institutions):
    """A sandbox LMS that keeps our JWKS 12 hours and refuses a kid it has not seen in that copy."""
    Activity.objects.create(slug="q1", title="Quiz: OSI layers", kind=ActivityKind.CUSTOM_QUIZ, position=1, default_points=10)
    connected = lms.connect(live_server.url, two_institutions[0], profile="moodle")
    api.configure_registration(registration=connected.seeded.registration, faults={"jwks_cache_seconds": 12 * 3600})
    sandbox_platform._strict_tool_jwks.clear()
    yield connected
    # Keep-alive connections to this live server would outlive it (its threads then touch a closed database).
    ags.http_session().close()
    sandbox_platform._http.close()


def deep_link_and_token(connected) -> tuple[requests.Response, str | Exception]:
    """A deep-linking response and a fresh AGS token (no cached one): each signed by the tool's key now."""
    activity = Activity.objects.get(slug="q1")
    with lms.browser() as http:
        done = lms.deep_link(http, connected, {activity.pk: {"graded": True, "points": 10}})
    ags.forget_tokens()
    cache.clear()
    try:
        token = ags.access_token(connected.registration, (ags.SCORE_SCOPE,), deployment_id=connected.deployment.deployment_id)
    except (ags.AgsError, ags.TokenError) as error:
        token = error
    return done, token


def assert_both_work(connected, phase: str) -> None:
    done, token = deep_link_and_token(connected)
    assert done.status_code == 200, f"{phase}: deep linking refused: {done.text[:300]}"
    assert isinstance(token, str) and token, f"{phase}: token refused: {token}"


def published_kids(live_server) -> set[str]:
    return {key["kid"] for key in requests.get(f"{live_server.url}{reverse('lti-jwks')}", timeout=5).json()["keys"]}


@pytest.mark.django_db(transaction=True)
def test_a_rotation_goes_unnoticed_by_a_platform_that_caches_the_jwks(strict_platform, live_server, clock, settings):
    settings.ROTATION_LEAD_HOURS, settings.ROTATION_GRACE_HOURS = 24, 24
    (old,) = signing_keys()
    assert_both_work(strict_platform, "before")  # the platform caches {old}

    rotation = start_rotation(actor=None)
    new = rotation.new_key
    assert published_kids(live_server) == {old.as_jwk()["kid"], new.as_jwk()["kid"]}
    clock.offset = HOUR  # its copy still holds only the old key: the old key signs, so nothing changes
    assert_both_work(strict_platform, "during the lead time (cached copy without the new key)")
    assert signing_keys() == [old]
    clock.offset = 13 * HOUR  # the copy expired: refetched with both keys
    assert_both_work(strict_platform, "during the lead time (refetched)")
    assert ToolKeyLifecycle.objects.get(key=new).phase == KeyPhase.NEXT

    clock.offset = 24 * HOUR + 30 * datetime.timedelta(minutes=1)  # no beat ran: signing moves on by itself
    assert_both_work(strict_platform, "after the switch")
    assert signing_keys() == [new]
    assert ToolKeyLifecycle.objects.get(key=old).phase == KeyPhase.RETIRING
    assert published_kids(live_server) == {old.as_jwk()["kid"], new.as_jwk()["kid"]}

    clock.offset = 48 * HOUR + 31 * datetime.timedelta(minutes=1)
    assert advance_key_rotation() == [f"{fingerprint(old.public_key)} retired"]  # the beat task
    assert published_kids(live_server) == {new.as_jwk()["kid"]}
    assert_both_work(strict_platform, "after the grace period")
    old.refresh_from_db()
    assert not old.is_active and ToolKeyLifecycle.objects.get(key=old).phase == KeyPhase.RETIRED


@pytest.mark.django_db(transaction=True)
def test_an_immediate_rotation_is_refused_by_that_platform_until_its_copy_expires(strict_platform, clock):
    assert_both_work(strict_platform, "before")
    warning = io.StringIO()
    call_command("rotate_tool_key", "--now", stdout=io.StringIO(), stderr=warning)
    assert "refuse" in warning.getvalue()
    done, token = deep_link_and_token(strict_platform)
    assert done.status_code != 200 and "kid" in done.text
    assert isinstance(token, ags.TokenError) and "kid" in str(token)
    clock.offset = 12 * HOUR
    assert_both_work(strict_platform, "after the platform refetched")


# --- The command and the admin action: audited, by fingerprint, Integration only ---------------------


def assert_audited_without_key_material(entry: AuditEntry, old: Key, new: Key) -> None:
    text = str(entry.changes)
    assert fingerprint(old.public_key) in text and fingerprint(new.public_key) in text
    for pem in (old.private_key, old.public_key, new.private_key, new.public_key):
        body = "".join(pem.strip().splitlines()[1:-1])
        assert body[:40] not in text
    assert "PRIVATE KEY" not in text


@pytest.mark.django_db
def test_the_command_starts_an_audited_rotation_with_the_given_lead_and_grace(capsys):
    (old,) = signing_keys()
    call_command("rotate_tool_key", "--lead-hours", "2", "--grace-hours", "3")
    new = Key.objects.latest()
    state = ToolKeyLifecycle.objects.get(key=new)
    assert state.phase == KeyPhase.NEXT and state.grace == 3 * HOUR
    assert abs(state.signing_from - (timezone.now() + 2 * HOUR)) < datetime.timedelta(minutes=1)
    out = capsys.readouterr().out
    assert fingerprint(new.public_key) in out and "PRIVATE" not in out
    entry = AuditEntry.objects.get(action="key.rotated")
    assert entry.actor_name == "system"
    assert_audited_without_key_material(entry, old, new)


@pytest.mark.django_db
def test_the_admin_action_is_audited_and_the_changelist_shows_state_kid_fingerprint_and_when(client_for):
    (old,) = signing_keys()
    integration = client_for(INTEGRATION)
    response = integration.post(reverse("admin:lti_tool_key_changelist"), {"action": "publish_new_key", "index": 0})
    assert response.status_code == 302
    new = Key.objects.latest()
    entry = AuditEntry.objects.get(action="key.rotated")
    assert entry.actor_name != "system"
    assert_audited_without_key_material(entry, old, new)
    page = integration.get(reverse("admin:lti_tool_key_changelist")).content.decode()
    for key in (old, new):
        assert key.as_jwk()["kid"] in page and fingerprint(key.public_key) in page
    assert "next: published, not yet signing" in page and ">signing<" in page
    switch = ToolKeyLifecycle.objects.get(key=new).signing_from
    assert f"{switch:%Y-%m-%d %H:%M} UTC" in page
    assert "PRIVATE KEY" not in page


@pytest.mark.django_db
@pytest.mark.parametrize("role", [READ_ONLY, SUPPORT])
def test_read_only_and_support_cannot_rotate(client_for, role):
    staff = client_for(role)
    page = staff.get(reverse("admin:lti_tool_key_changelist"))
    assert page.status_code in (200, 403)
    assert 'value="publish_new_key"' not in page.content.decode()
    before = Key.objects.count()
    response = staff.post(reverse("admin:lti_tool_key_changelist"), {"action": "publish_new_key", "index": 0})
    assert response.status_code in (200, 302, 403)
    assert Key.objects.count() == before and not AuditEntry.objects.filter(action="key.rotated").exists()
    assert not User.objects.get(username=page.wsgi_request.user.username).has_perm("lti_tool.change_key")

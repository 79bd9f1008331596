"""Staff sessions end after ADMIN_IDLE_TIMEOUT_MINUTES without a request; staff see times in their own zone.

Keyed on the signed-in staff user, not on the session: LTI learners' launch sessions share the
session engine but carry no Django login, so they are never cut here (nor given a staff zone).
"""
from __future__ import annotations

import time
from typing import Callable

from django.conf import settings
from django.utils.translation import ngettext
from django.contrib import messages
from django.contrib.auth import logout
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone

from .time_zones import zone_for

LAST_SEEN_SESSION_KEY = "staff_last_seen"
# The last-seen time is written at most this often, so a busy admin page is not a session write per request.
WRITE_EVERY_SECONDS = 60


def _now() -> int:
    return int(time.time())


def mark_active(session) -> None:
    """Start (or restart) the idle clock of a staff session: at sign-in, and on requests."""
    session[LAST_SEEN_SESSION_KEY] = _now()


class StaffIdleTimeoutMiddleware:
    """After AuthenticationMiddleware and MessageMiddleware."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = request.user
        if user.is_authenticated and user.is_staff:
            now = _now()
            last_seen = request.session.get(LAST_SEEN_SESSION_KEY)
            minutes = settings.ADMIN_IDLE_TIMEOUT_MINUTES
            if last_seen is not None and now - last_seen > minutes * 60:
                logout(request)
                admin_login = reverse("admin:login")
                if request.path.startswith(reverse("admin:index")) and request.path != admin_login:
                    messages.warning(request, ngettext(
                        "You were signed out after %(n)d minute without activity. Sign in again.",
                        "You were signed out after %(n)d minutes without activity. Sign in again.", minutes,
                    ) % {"n": minutes})
                    return redirect_to_login(request.get_full_path(), admin_login)
            elif last_seen is None or now - last_seen >= WRITE_EVERY_SECONDS:
                mark_active(request.session)
        return self.get_response(request)


class StaffTimeZoneMiddleware:
    """Staff see times in their own zone: the one they chose (StaffPreference), else their browser's
    (posted once, with the sign-in form), else settings.TIME_ZONE. After AuthenticationMiddleware.

    The zone is kept in the session from sign-in on (staff.time_zones.zone_at_sign_in), so a page
    costs no query for it.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = request.user
        zone = zone_for(request) if user.is_authenticated and user.is_staff else None
        if zone is not None:
            timezone.activate(zone)
        try:
            response = self.get_response(request)
        finally:
            timezone.deactivate()
        return response

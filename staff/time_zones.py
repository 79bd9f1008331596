"""Each staff member's time zone: which one applies (chosen, else the browser's, else settings.TIME_ZONE),
kept in the session; the page where they choose it is staff.time_zone_page.

A zone name comes from a browser (the sign-in form's hidden field, the page's select): it is checked
against the IANA database before anything is kept, and a name that is not a zone is refused.
"""
from __future__ import annotations

import functools
import re
import zoneinfo

from django.contrib.auth.signals import user_logged_in
from django.dispatch import receiver
from django.http import HttpRequest

from .models import StaffPreference

CHOSEN_SESSION_KEY = "staff_time_zone"  # the preference ("" = none chosen), read once per session
BROWSER_SESSION_KEY = "staff_browser_time_zone"  # what the browser said at sign-in
BROWSER_FIELD = "browser_time_zone"  # the sign-in form's hidden field (templates/admin/login.html)
_ZONE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+){0,2}$")


@functools.lru_cache(maxsize=1)
def zone_names() -> tuple[str, ...]:
    """Every IANA zone name this machine knows, sorted (read from disk once per process)."""
    return tuple(sorted(zoneinfo.available_timezones()))


def valid_zone(name: object) -> zoneinfo.ZoneInfo | None:
    """The zone named `name`, or None when it is not a zone name (anything a browser sent)."""
    if not isinstance(name, str) or len(name) > 64 or not _ZONE_NAME.match(name):
        return None
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return None


def zone_for(request: HttpRequest) -> zoneinfo.ZoneInfo | None:
    """The zone to show this staff member times in; None: settings.TIME_ZONE. (A session from before
    sign-in put the choice in it reads the preference once.)"""
    session = request.session
    chosen = session.get(CHOSEN_SESSION_KEY)
    if chosen is None:
        chosen = StaffPreference.objects.filter(user=request.user).values_list("time_zone", flat=True).first() or ""
        session[CHOSEN_SESSION_KEY] = chosen
    return valid_zone(chosen) or valid_zone(session.get(BROWSER_SESSION_KEY))


@receiver(user_logged_in, dispatch_uid="staff_time_zone_at_sign_in")
def zone_at_sign_in(sender, request: HttpRequest | None, user, **kwargs) -> None:
    """At sign-in, put the staff member's zone in the session: their choice, and what the browser
    reported with the sign-in form (kept only if it is a zone). Pages then read no table for it."""
    if request is None or not getattr(user, "is_staff", False) or not hasattr(request, "session"):
        return
    request.session[CHOSEN_SESSION_KEY] = (
        StaffPreference.objects.filter(user=user).values_list("time_zone", flat=True).first() or ""
    )
    name = request.POST.get(BROWSER_FIELD, "") if request.method == "POST" else ""
    if valid_zone(name) is not None:
        request.session[BROWSER_SESSION_KEY] = name


def choose_zone(*, request: HttpRequest, time_zone: str) -> StaffPreference:
    """Save the staff member's own zone ("" = the browser's, else the default) and use it from the next page."""
    preference, _ = StaffPreference.objects.update_or_create(user=request.user, defaults={"time_zone": time_zone})
    request.session[CHOSEN_SESSION_KEY] = time_zone
    return preference

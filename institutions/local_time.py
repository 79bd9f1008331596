"""Times as staff read them: in their own zone, to the second, with UTC on hover.

The zone is the one active for the request (staff.middleware.StaffTimeZoneMiddleware activates the
staff member's); here only the rendering, so every admin page (any app's, Python columns and
templates alike: `{% load staff_time %}{% local_time value %}`) shows a time the same way.
"""
from __future__ import annotations

import datetime

from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

SECONDS = "%Y-%m-%d %H:%M:%S"


def local_text(value: datetime.datetime | None) -> str:
    """Plain text for sentences: "2025-03-04 16:05:09 CET" in the active zone."""
    if value is None:
        return "—"
    if timezone.is_naive(value):
        value = timezone.make_aware(value, datetime.timezone.utc)
    local = timezone.localtime(value)
    return f"{local.strftime(SECONDS)} {local.tzname()}"


def local_time(value: datetime.datetime | None) -> SafeString | str:
    """<time datetime="…Z" title="… UTC">local time, to the second, and the zone's name</time>."""
    if value is None:
        return "—"
    if timezone.is_naive(value):
        value = timezone.make_aware(value, datetime.timezone.utc)
    utc = value.astimezone(datetime.timezone.utc)
    return format_html(
        '<time datetime="{}" title="{} UTC">{}</time>',
        utc.strftime("%Y-%m-%dT%H:%M:%SZ"), utc.strftime(SECONDS), local_text(value),
    )

"""Links into the resync form, for every page that offers "Resync…" (the admin pages, the why page).

Kept apart from `gradesync.admin` so that the support pages (`gradesync.admin_support`), which that module
imports, can build them too.
"""
from __future__ import annotations

from urllib.parse import urlencode

from django.db.models import Model
from django.urls import reverse


def _pk(value: Model | int | None) -> int | None:
    return value.pk if isinstance(value, Model) else value


def resync_url(
    *,
    institution: Model | int | None = None,
    course: Model | int | None = None,
    lti_user: Model | int | None = None,
    activity_key: str = "",
    delivery: Model | int | None = None,
    only_changed: bool = False,
    choose: bool = False,
) -> str:
    """The resync page for a scope (objects or their ids).

    By default it opens on the preview of that scope, ready to confirm; `choose=True` opens the form with the
    scope filled in, to narrow it (a course's page: then pick a learner or an activity by name).
    """
    query: dict[str, object] = {
        name: value
        for name, value in (
            ("institution", _pk(institution)), ("course", _pk(course)), ("lti_user", _pk(lti_user)),
            ("activity_key", activity_key), ("delivery", _pk(delivery)),
        )
        if value not in (None, "")
    }
    if only_changed:
        query["only_changed"] = "on"
    if choose:
        query["step"] = "choose"
    url = reverse("admin:gradesync_resyncjob_resync")
    return f"{url}?{urlencode(query)}" if query else url

"""The browser session is bound to one verified LTI launch (LTI user, course, deployment)."""
from __future__ import annotations

from django.http import HttpRequest

from .models import Launch

LAUNCH_SESSION_KEY = "courseware_launch_id"


def bind_session_to_launch(request: HttpRequest, launch: Launch) -> None:
    # A new launch starts a new session: nothing of an earlier user or course carries over.
    request.session.cycle_key()
    request.session[LAUNCH_SESSION_KEY] = launch.pk


def current_launch(request: HttpRequest) -> Launch | None:
    """The launch this session is bound to, or None (no launch, or a direct login)."""
    launch_id = request.session.get(LAUNCH_SESSION_KEY)
    if launch_id is None:
        return None
    return (
        Launch.objects.select_related("lti_user", "course__institution", "deployment", "resource_link")
        .filter(pk=launch_id)
        .first()
    )

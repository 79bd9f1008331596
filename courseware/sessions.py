"""The browser session is bound to one verified LTI launch (LTI user, course, deployment)."""
from __future__ import annotations

from django.http import HttpRequest

from .models import Launch

LAUNCH_SESSION_KEY = "courseware_launch_id"
# The launch of this request, read once per request (the view and the framing decorator both ask).
_LAUNCH_ATTRIBUTE = "_courseware_launch"
_BOUND_ATTRIBUTE = "_courseware_bound_launch"


def bind_session_to_launch(request: HttpRequest, launch: Launch, *, frame_origins: list[str]) -> None:
    """Called once the launch is verified and recorded: its session's pages are framed by `frame_origins` only
    (courseware.framing.launch_frame_origins)."""
    # A new launch starts a new session: nothing of an earlier user or course carries over.
    request.session.cycle_key()
    request.session[LAUNCH_SESSION_KEY] = launch.pk
    launch.frame_origins = frame_origins
    launch.save(update_fields=["frame_origins"])
    setattr(request, _LAUNCH_ATTRIBUTE, launch)
    setattr(request, _BOUND_ATTRIBUTE, launch)


def launch_bound_by(request: HttpRequest) -> Launch | None:
    """The launch this very request verified and bound the session to, if any."""
    return getattr(request, _BOUND_ATTRIBUTE, None)


def current_launch(request: HttpRequest) -> Launch | None:
    """The launch this session is bound to, or None (no launch, or a direct login)."""
    if hasattr(request, _LAUNCH_ATTRIBUTE):
        return getattr(request, _LAUNCH_ATTRIBUTE)
    launch_id = request.session.get(LAUNCH_SESSION_KEY)
    launch = None
    if launch_id is not None:
        launch = (
            Launch.objects.select_related("lti_user", "course__institution", "deployment", "resource_link")
            .filter(pk=launch_id)
            .first()
        )
    setattr(request, _LAUNCH_ATTRIBUTE, launch)
    return launch

"""Who may frame our pages: `Content-Security-Policy: frame-ancestors`, per launch.

An LMS frames the launch, the player, the picker, the grade sync and schedule pages. Only the
origins that legitimately frame *this* launch may do so, fixed when the launch is verified and
kept on the Launch row for every page of its session:

- the platform's origins from its registration (issuer, auth URL);
- the origin the launch was posted from (Origin header, else the Referer's origin);
- the origin of `launch_presentation.return_url` (Canvas frames tools from each school's own or
  vanity domain, never from its issuer);
- the registration's extra origins (RegistrationProfile.frame_origins).

Every other page keeps the site-wide policy (settings.CONTENT_SECURITY_POLICY: `frame-ancestors
'none'`, and X-Frame-Options DENY): the admin, the JWKS, the support pages.
The header itself is written by django-csp's middleware; views only name the ancestors.
"""
from __future__ import annotations

from functools import wraps
from typing import Callable
from urllib.parse import urlsplit

from csp.constants import SELF
from django.http import HttpRequest, HttpResponse

from institutions.models import ORIGIN_PATTERN

from .models import Launch
from .sessions import current_launch, launch_bound_by

# Any page may frame a refusal (see `refusal`); CSP's `*` matches every http(s) origin.
ANY_FRAME = "*"
MAX_FRAME_ORIGINS = 20
DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_of(url: object) -> str | None:
    """`scheme://host[:port]` of an http(s) URL, or None (no URL, another scheme, a host a CSP could be bent by)."""
    if not isinstance(url, str) or not url or len(url) > 2000:
        return None
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), parts.hostname or ""
    if scheme not in DEFAULT_PORTS or not host:
        return None
    if ":" in host:
        host = f"[{host}]"  # IPv6: urlsplit drops the brackets a URL needs
    origin = f"{scheme}://{host}" + (f":{port}" if port and port != DEFAULT_PORTS[scheme] else "")
    return origin if ORIGIN_PATTERN.match(origin) else None


def posted_from(request: HttpRequest) -> str | None:
    """The origin of the page that posted this request (the LMS page that framed the launch)."""
    origin = request.headers.get("Origin", "")
    if origin and origin != "null":
        return origin_of(origin)
    return origin_of(request.headers.get("Referer", ""))


def launch_frame_origins(launch: Launch, *, request: HttpRequest) -> list[str]:
    """The origins that may frame a verified launch's pages (in order, without repeats)."""
    registration = launch.deployment.registration
    profile = getattr(registration, "profile", None)
    extra = profile.frame_origins.splitlines() if profile is not None else []
    candidates = [registration.issuer, registration.auth_url, posted_from(request), launch.return_url, *extra]
    origins = dict.fromkeys(filter(None, (origin_of(url) for url in candidates)))
    return list(origins)[:MAX_FRAME_ORIGINS]


def refusal(response: HttpResponse) -> HttpResponse:
    """Mark a refusal page that any LMS may frame.

    A refusal holds no form and no action (a reason, at most a link back to the LMS), so framing it
    cannot be turned into clickjacking; it must show inside the LMS frame that opened it, and when no
    verified launch says which LMS that is (the launch was refused, or third-party cookies were
    blocked so the session has none), no narrower list is known.
    """
    response.frame_ancestors = [ANY_FRAME]
    return response


def _allow(response: HttpResponse, ancestors: list[str]) -> HttpResponse:
    response._csp_replace = {**(getattr(response, "_csp_replace", None) or {}), "frame-ancestors": ancestors}
    response.xframe_options_exempt = True  # the CSP names who may frame it; X-Frame-Options cannot
    return response


def framed_by_launch(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """A page the LMS frames after a launch: only the session's launch's origins may frame it.

    Without a launch (a staff member's direct login), only our own origin; a refusal, by anyone.
    """
    @wraps(view)
    def wrapped(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        response = view(request, *args, **kwargs)
        launch = current_launch(request)
        if launch is not None:
            return _allow(response, launch.frame_origins or [SELF])
        return _allow(response, getattr(response, "frame_ancestors", None) or [SELF])

    return wrapped


def framed_at_the_door(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """The LTI login and launch endpoints: the launch's origins once it is verified, anyone before.

    Before verification nothing says which LMS frames the request, and what these endpoints answer
    then is a redirect or a refusal page (no form, no action: see `refusal`), which must be readable
    inside whichever LMS frame sent it. A session's earlier launch is not consulted: it may be
    another LMS's.
    """
    @wraps(view)
    def wrapped(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        response = view(request, *args, **kwargs)
        launch = launch_bound_by(request)
        return _allow(response, (launch.frame_origins or [SELF]) if launch is not None else [ANY_FRAME])

    return wrapped

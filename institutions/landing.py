"""The public landing page at "/": what this service is, and where each kind of visitor goes next.

No sign-in, GET only, nothing secret: the links (the admin, the sandbox LMS when it is on) and the
tool's public keyset (JWKS) URL, which LMS administrators may be asked for.
"""
from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.views.decorators.http import require_GET

from .tool_configuration import JWKS_PATH


@require_GET
def landing(request: HttpRequest) -> HttpResponse:
    context = {
        "tool_title": settings.TOOL_TITLE,
        "admin_url": reverse("admin:index"),
        "jwks_url": request.build_absolute_uri("/" + JWKS_PATH),
        # The sandbox is a demo and test platform: only linked when this installation runs one.
        "sandbox_url": reverse("sandbox_lms:home") if settings.SANDBOX_LMS else "",
    }
    return TemplateResponse(request, "landing.html", context)

"""The page the LMS opens (in its iframe or a new tab) when its admin pastes our registration link."""
from __future__ import annotations

from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.shortcuts import render
from django.utils.cache import add_never_cache_headers

from .services import RegistrationRefused, register

TEMPLATE = "institutions/dynamic_registration/result.html"


def _frameable_by_any_lms(response: HttpResponse) -> HttpResponse:
    """Let any origin frame this page.

    Moodle and Canvas open it in an iframe from their admin page, whose origin we cannot know
    beforehand (Canvas serves each school's admin from its own domain, not from the host of its
    openid configuration). Framing gives a clickjacker nothing here: the page has no form and no
    button, and the registration happens on load for whoever holds the one-time link anyway.
    """
    response._csp_replace = {**(getattr(response, "_csp_replace", None) or {}), "frame-ancestors": ["*"]}
    response.xframe_options_exempt = True
    add_never_cache_headers(response)  # a one-time link's answer is never replayed from a cache
    return response


def register_by_link(request: HttpRequest, token: str) -> HttpResponse:
    """GET ?openid_configuration=…&registration_token=…: register, then tell the LMS to close this window."""
    if request.method != "GET":
        return HttpResponseNotAllowed(["GET"])
    try:
        registered = register(
            token=token,
            openid_configuration_url=request.GET.get("openid_configuration"),
            registration_token=request.GET.get("registration_token"),
            base_url=request.build_absolute_uri("/"),
        )
    except RegistrationRefused as refused:
        response = render(request, TEMPLATE, {"reason": refused.reason}, status=refused.status)
        return _frameable_by_any_lms(response)
    response = render(request, TEMPLATE, {"registered": registered})
    return _frameable_by_any_lms(response)

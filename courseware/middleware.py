"""Cookies that survive inside an LMS iframe.

An LMS frames our pages from another site, so the session and CSRF cookies must be
`SameSite=None; Secure` when served over https. Over plain http (the local demo, where LMS and tool share a site)
browsers refuse `SameSite=None` without `Secure`, so the cookies stay `Lax` there.
"""
from __future__ import annotations

from typing import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse


class FramedCookiesMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        secure = request.is_secure()
        for name in (settings.SESSION_COOKIE_NAME, settings.CSRF_COOKIE_NAME):
            morsel = response.cookies.get(name)
            if morsel is None:
                continue
            if secure:
                morsel["samesite"] = "None"
                morsel["secure"] = True
            else:
                morsel["samesite"] = "Lax"
        return response

"""The admin site staff sign in to: a password, then a second factor, before any admin page.

`has_permission` requires a session verified by django-otp, so every page behind
`admin.site.admin_view` (the model admins and the support pages under /admin/gradesync/) sends
a password-only session to the login page, which sends it on to the code (or enrolment) step.
"""
from __future__ import annotations

from urllib.parse import urlencode

from django.conf import settings
from django.contrib import admin
from django.contrib.auth import REDIRECT_FIELD_NAME
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import path, reverse
from django.views.decorators.cache import never_cache

from . import access, views
from .second_factor import is_verified, needs_second_factor


class StaffAdminSite(admin.AdminSite):
    """Branded with settings.TOOL_TITLE; "View site" opens the public landing page (institutions.landing)."""

    site_url = "/"

    # Read at each request (not at import) so the title follows settings.
    @property
    def site_header(self) -> str:  # type: ignore[override]
        return settings.TOOL_TITLE

    @property
    def site_title(self) -> str:  # type: ignore[override]
        return settings.TOOL_TITLE

    @property
    def index_title(self) -> str:  # type: ignore[override]
        return "Support and onboarding"

    def each_context(self, request: HttpRequest) -> dict:
        context = super().each_context(request)
        user = getattr(request, "user", None)
        # The header names the signed-in role, so a missing button is explained before anyone clicks.
        if user is not None and user.is_authenticated and user.is_staff:
            context["staff_role"] = access.role_names(user)
        return context

    def has_permission(self, request: HttpRequest) -> bool:
        return super().has_permission(request) and (settings.DEMO_SKIP_2FA or is_verified(request.user))

    def get_urls(self):
        # Not behind admin_view: these pages are how a session becomes verified.
        return [
            path("second-factor/", never_cache(views.second_factor), name="second_factor"),
            path("second-factor/enrol/", never_cache(views.enrol), name="second_factor_enrol"),
        ] + super().get_urls()

    def login(self, request: HttpRequest, extra_context=None) -> HttpResponse:
        if request.method == "GET" and needs_second_factor(request.user):
            return self._to_second_factor(request.GET.get(REDIRECT_FIELD_NAME, ""))
        context = {"demo_skip_2fa": settings.DEMO_SKIP_2FA, **(extra_context or {})}
        response = super().login(request, context)
        if request.method == "POST" and response.status_code == 302 and needs_second_factor(request.user):
            return self._to_second_factor(response["Location"])
        return response

    def _to_second_factor(self, next_url: str) -> HttpResponseRedirect:
        url = reverse("admin:second_factor", current_app=self.name)
        return HttpResponseRedirect(url + ("?" + urlencode({REDIRECT_FIELD_NAME: next_url}) if next_url else ""))

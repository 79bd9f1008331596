"""Staff sign-in pages in the admin layout: the code step, TOTP enrolment, lockout, and the 403 page."""
from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin
from django.contrib.auth import REDIRECT_FIELD_NAME, logout
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.defaults import permission_denied as default_permission_denied

from . import access
from .second_factor import (
    CodeRefused, LockedOut, confirmed_device, enrolment_device, issue_backup_codes, needs_second_factor, qr_svg, secret_text,
    verify_code,
)


class CodeForm(forms.Form):
    code = forms.CharField(
        label="Code", max_length=12,
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "inputmode": "numeric", "autofocus": True, "size": 8}),
    )


def _next_url(request: HttpRequest) -> str:
    candidate = request.POST.get(REDIRECT_FIELD_NAME) or request.GET.get(REDIRECT_FIELD_NAME, "")
    if candidate and url_has_allowed_host_and_scheme(candidate, {request.get_host()}, require_https=request.is_secure()):
        return candidate
    return reverse("admin:index")


def _same_query(url: str, request: HttpRequest) -> str:
    return url + ("?" + request.GET.urlencode() if request.GET else "")


def _context(request: HttpRequest, title: str, **extra: Any) -> dict:
    return {**admin.site.each_context(request), "title": title, "next": _next_url(request), **extra}


def _gate(request: HttpRequest) -> HttpResponse | None:
    """Where to send a request that has no business on the code pages (or None to carry on)."""
    if request.method == "POST" and "cancel" in request.POST:
        logout(request)
        return HttpResponseRedirect(reverse("admin:login"))
    if not (request.user.is_authenticated and request.user.is_active and request.user.is_staff):
        return redirect_to_login(_next_url(request), reverse("admin:login"))
    if not needs_second_factor(request.user):
        return HttpResponseRedirect(_next_url(request))
    return None


def _check(request: HttpRequest, device, form: CodeForm, *, backup_allowed: bool = True) -> bool | HttpResponse:
    """Verify the posted code: True once verified, False to show the form again, or the lockout page."""
    if not form.is_valid():
        return False
    try:
        verify_code(request, device, form.cleaned_data["code"], backup_allowed=backup_allowed)
    except CodeRefused as refused:
        form.add_error("code", str(refused))
        return False
    except LockedOut:
        return locked_out(request)
    return True


def second_factor(request: HttpRequest) -> HttpResponse:
    """After the password: the code from the staff member's authenticator app."""
    if (gate := _gate(request)) is not None:
        return gate
    device = confirmed_device(request.user)
    if device is None:
        return HttpResponseRedirect(_same_query(reverse("admin:second_factor_enrol"), request))
    form = CodeForm(request.POST or None)
    if request.method == "POST" and (done := _check(request, device, form)):
        return done if isinstance(done, HttpResponse) else HttpResponseRedirect(_next_url(request))
    return TemplateResponse(request, "admin/staff/second_factor.html", _context(request, "Second factor", form=form))


def enrol(request: HttpRequest) -> HttpResponse:
    """First sign-in: add this account to an authenticator app (QR code or typed key), then confirm with a code."""
    if (gate := _gate(request)) is not None:
        return gate
    if confirmed_device(request.user) is not None:
        # Once enrolled, a new device needs the old one (or an administrator deleting it): a password never suffices.
        return HttpResponseRedirect(_same_query(reverse("admin:second_factor"), request))
    device = enrolment_device(request.user)
    form = CodeForm(request.POST or None)
    if request.method == "POST" and (done := _check(request, device, form, backup_allowed=False)):
        if isinstance(done, HttpResponse):
            return done
        codes = issue_backup_codes(request.user)
        return TemplateResponse(request, "admin/staff/backup_codes.html", _context(request, "Your backup codes", codes=codes))
    context = _context(request, "Set up your second factor", form=form, qr_svg=qr_svg(device),
                       secret=secret_text(device), issuer=settings.OTP_TOTP_ISSUER)
    return TemplateResponse(request, "admin/staff/enrol.html", context)


def locked_out(request: HttpRequest, original_response: HttpResponse | None = None, credentials: dict | None = None) -> HttpResponse:
    """django-axes' lockout page (AXES_LOCKOUT_CALLABLE): the limit was reached, and when to try again."""
    cool_off = settings.AXES_COOLOFF_TIME
    context = _context(
        request, "Sign-in locked",
        failure_limit=settings.AXES_FAILURE_LIMIT,
        cool_off_minutes=int(cool_off.total_seconds() // 60),
        retry_at=timezone.now() + cool_off,
    )
    return TemplateResponse(request, "admin/staff/locked_out.html", context, status=settings.AXES_HTTP_RESPONSE_CODE).render()


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """handler403: inside the admin, a page in the admin layout naming the role needed; elsewhere Django's own."""
    user = getattr(request, "user", None)
    if not (request.path.startswith(reverse("admin:index")) and user is not None and user.is_authenticated and user.is_staff):
        return default_permission_denied(request, exception)
    reason = str(exception) if exception is not None and exception.args else ""
    message = access.refusal(user, request.path, reason)
    return TemplateResponse(request, "admin/staff/403.html", _context(request, "Not allowed", message=message), status=403).render()

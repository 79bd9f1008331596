"""Dynamic Registration links in the admin: integration staff make a one-time link for an institution,
see it once, and follow each link's state (usable, expired, used → its registration, last refusal)."""
from __future__ import annotations

from datetime import timedelta
from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db import models
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from ..dynamic_registration.invitations import DEFAULT_LIFETIME, MAX_LIFETIME, create_invitation
from ..models import Institution, LmsFamily, RegistrationInvitation


class InvitationForm(forms.Form):
    institution = forms.ModelChoiceField(queryset=Institution.objects.all(), label=_("Institution"))
    lms_family = forms.ChoiceField(
        choices=LmsFamily.choices, initial=LmsFamily.OTHER, label=_("LMS"),
        help_text=_("What the link is for; the LMS's own product code decides when it says which it is."),
    )
    activate_on_registration = forms.BooleanField(
        required=False, label=_("Activate on registration"),
        help_text=_("Launches and grades start at once; otherwise the new deployment waits for staff to activate it."),
    )
    lifetime_days = forms.IntegerField(
        min_value=1, max_value=MAX_LIFETIME.days, initial=DEFAULT_LIFETIME.days, label=_("Valid for (days)")
    )


class InvitationStateFilter(admin.SimpleListFilter):
    title = _("state")
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list:
        return [("usable", _("Usable")), ("used", _("Used")), ("expired", _("Expired"))]

    def queryset(self, request: HttpRequest, queryset: models.QuerySet) -> models.QuerySet:
        now = timezone.now()
        if self.value() == "usable":
            return queryset.usable(now)
        if self.value() == "used":
            return queryset.filter(used_at__isnull=False)
        if self.value() == "expired":
            return queryset.filter(used_at__isnull=True, expires_at__lte=now)
        return queryset


@admin.register(RegistrationInvitation)
class RegistrationInvitationAdmin(admin.ModelAdmin):
    """Links are made only through `create_invitation` (audited; the link shown once) and never edited."""

    list_display = ["institution", "lms_family", "state", "registration_link", "last_refusal", "created_by", "created_at", "expires_at"]
    list_filter = [InvitationStateFilter, "lms_family"]
    list_select_related = ["institution", "registration", "created_by"]
    search_fields = ["institution__name"]
    fields = ["institution", "lms_family", "activate_on_registration", "state", "registration_link", "last_refusal",
              "created_by", "created_at", "expires_at", "used_at"]
    readonly_fields = fields
    ordering = ["-created_at"]
    show_full_result_count = False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description=_("state"))
    def state(self, invitation: RegistrationInvitation) -> str:
        if invitation.used_at is not None:
            return _("Used")
        return _("Expired") if invitation.expires_at <= timezone.now() else _("Usable")

    @admin.display(description=_("registration"))
    def registration_link(self, invitation: RegistrationInvitation) -> str:
        if invitation.registration is None:
            return "—"
        url = reverse("admin:lti_tool_ltiregistration_change", args=[invitation.registration.pk])
        return format_html('<a href="{}">{}</a>', url, invitation.registration.name)

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context: dict | None = None) -> HttpResponse:
        """The form, then a page showing the new link once (never stored: only its SHA-256 is)."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = InvitationForm(request.POST or None, initial={"institution": request.GET.get("institution")})
        context = {**self.admin_site.each_context(request), "opts": self.opts, "title": _("New Dynamic Registration link")}
        if request.method == "POST" and form.is_valid():
            invitation, link = create_invitation(
                institution=form.cleaned_data["institution"],
                lms_family=form.cleaned_data["lms_family"],
                activate_on_registration=form.cleaned_data["activate_on_registration"],
                lifetime=timedelta(days=form.cleaned_data["lifetime_days"]),
                actor=request.user,
                base_url=request.build_absolute_uri("/"),
            )
            response = TemplateResponse(
                request, "admin/institutions/registrationinvitation/link.html",
                {**context, "invitation": invitation, "link": link, "title": _("Dynamic Registration link")},
            )
            response["Cache-Control"] = "no-store"
            return response
        return TemplateResponse(request, "admin/institutions/registrationinvitation/add.html", {**context, "form": form})

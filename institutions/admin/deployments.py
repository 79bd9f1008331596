"""LTI deployments in the admin: pending ones assigned to an institution and activated in one click."""
from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import models, transaction
from django.db.models import Q
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext
from lti_tool.models import LtiDeployment

from .. import services
from ..models import (
    Institution,
)
from .audit_trail import AuditedAdminMixin


# --- Deployments ------------------------------------------------------------------------------


class DeploymentStatusFilter(admin.SimpleListFilter):
    title = _("status")
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list:
        return [("pending", _("Pending (inactive or unassigned)")), ("active", _("Active and assigned"))]

    def queryset(self, request: HttpRequest, queryset: models.QuerySet) -> models.QuerySet:
        pending = Q(is_active=False) | Q(ownership__isnull=True)
        if self.value() == "pending":
            return queryset.filter(pending)
        if self.value() == "active":
            return queryset.exclude(pending)
        return queryset


class AssignDeploymentForm(forms.Form):
    institution = forms.ModelChoiceField(queryset=Institution.objects.all(), label=_("Institution"))
    activate = forms.BooleanField(required=False, initial=True, label=_("Activate (accept launches and grades)"))


def is_pending(deployment: LtiDeployment) -> bool:
    """Inactive or owned by no institution: it launches nothing yet."""
    return not deployment.is_active or getattr(deployment, "ownership", None) is None


def suggested_institution(deployment: LtiDeployment) -> Institution | None:
    """Its owner, or else the one institution owning the registration's other deployments (an LMS serves one school)."""
    ownership = getattr(deployment, "ownership", None)
    if ownership is not None:
        return ownership.institution
    owners = list(
        Institution.objects.filter(deployments__deployment__registration_id=deployment.registration_id).distinct()[:2]
    )
    return owners[0] if len(owners) == 1 else None


def kept_by_courses(courses: models.QuerySet) -> str:
    """Why Delete is not offered: courses were launched through it, and Course.deployment protects it ("" if none)."""
    count = courses.count()
    if not count:
        return ""
    return ngettext(
        "Not deletable: %(n)d course was launched through it, and its links and grades depend on it. Switch it off (is active) instead.",
        "Not deletable: %(n)d courses were launched through it, and their links and grades depend on it. Switch it off (is active) instead.",
        count,
    ) % {"n": count}


def assigned_message(count: int, institution: Institution, *, activated: bool) -> str:
    """"1 deployment assigned to North College and activated." / "3 deployments assigned to North College."."""
    if activated:
        text = ngettext("%(n)d deployment assigned to %(inst)s and activated.",
                        "%(n)d deployments assigned to %(inst)s and activated.", count)
    else:
        text = ngettext("%(n)d deployment assigned to %(inst)s.", "%(n)d deployments assigned to %(inst)s.", count)
    return text % {"n": count, "inst": institution}


@admin.register(LtiDeployment)
class DeploymentAdmin(AuditedAdminMixin, admin.ModelAdmin):
    list_display = ["deployment_id", "registration", "status", "institution", "platform", "datetime_created"]
    list_filter = [DeploymentStatusFilter, "registration"]
    list_select_related = ["registration", "ownership__institution", "platform_instance"]
    search_fields = ["deployment_id", "registration__name", "ownership__institution__name", "platform_instance__name"]
    fields = ["registration", "deployment_id", "is_active", "institution", "platform", "pns_url", "datetime_created"]
    readonly_fields = ["institution", "platform", "pns_url", "datetime_created"]
    actions = ["assign_to_institution"]
    ordering = ["-datetime_created"]
    show_full_result_count = False
    change_form_template = "admin/lti_tool/ltideployment/change_form.html"

    def get_readonly_fields(self, request: HttpRequest, obj: LtiDeployment | None = None) -> list[str]:
        # Its launches, courses and grades came through this registration: moving it would re-home them silently.
        readonly = list(super().get_readonly_fields(request, obj))
        return ["registration", *readonly] if obj is not None else readonly

    def get_urls(self) -> list:
        return [
            path(
                "<path:object_id>/assign-and-activate/",
                self.admin_site.admin_view(self.assign_and_activate_view),
                name="lti_tool_ltideployment_assign_and_activate",
            ),
            *super().get_urls(),
        ]

    def has_delete_permission(self, request: HttpRequest, obj: LtiDeployment | None = None) -> bool:
        # Its courses protect it (Course.deployment is PROTECT): Delete would only end on "Cannot delete".
        return super().has_delete_permission(request, obj) and (obj is None or not obj.courses.exists())

    def render_change_form(self, request: HttpRequest, context: dict, *args: Any, obj: Any = None, **kwargs: Any) -> HttpResponse:
        if obj is not None and super().has_delete_permission(request, obj):
            context["kept_by_courses"] = kept_by_courses(obj.courses.all())
        if obj is not None and is_pending(obj) and self.has_change_permission(request, obj):
            suggested = suggested_institution(obj)
            context["assign_suggested"] = suggested
            context["assign_form"] = AssignDeploymentForm(initial={"institution": suggested.pk if suggested else None})
        return super().render_change_form(request, context, *args, obj=obj, **kwargs)

    def assign_and_activate_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The change page's one-click "Assign to … and activate": one POST, audited by services.assign_deployment."""
        deployment = self.get_object(request, object_id)  # None for an unknown or malformed id
        if deployment is None:
            raise Http404
        if not self.has_change_permission(request, deployment):
            raise PermissionDenied
        change_url = reverse("admin:lti_tool_ltideployment_change", args=[deployment.pk])
        if request.method != "POST":
            return HttpResponseRedirect(change_url)
        form = AssignDeploymentForm(request.POST)
        if not form.is_valid():
            self.message_user(request, _("Choose the institution this deployment belongs to."), messages.ERROR)
            return HttpResponseRedirect(change_url)
        institution = form.cleaned_data["institution"]
        try:
            with transaction.atomic():
                services.assign_deployment(deployment=deployment, institution=institution, activate=True, acting_user=request.user)
        except ValidationError as error:
            self.message_user(request, " ".join(error.messages), messages.ERROR)
            return HttpResponseRedirect(change_url)
        self.log_change(request, deployment, f"Assigned to {institution} and activated")
        self.message_user(request, _("Deployment %(d)s now belongs to %(inst)s and is active.") % {"d": deployment.deployment_id, "inst": institution})
        return HttpResponseRedirect(change_url)

    @admin.display(description=_("status"))
    def status(self, deployment: LtiDeployment) -> str:
        ownership = getattr(deployment, "ownership", None)
        if deployment.is_active and ownership:
            return format_html('<span style="color:#2a7">{}</span>', _("active"))
        return format_html('<strong style="color:#c60">{}</strong>', _("pending"))

    @admin.display(description=_("institution"), ordering="ownership__institution__name")
    def institution(self, deployment: LtiDeployment) -> str:
        ownership = getattr(deployment, "ownership", None)
        return str(ownership.institution) if ownership else "—"

    @admin.display(description=_("platform (from its first launch)"))
    def platform(self, deployment: LtiDeployment) -> str:
        instance = deployment.platform_instance
        if instance is None:
            return "—"
        return " · ".join(filter(None, [instance.name, instance.product_family_code, instance.url, instance.guid]))

    @admin.action(description=_("Assign to an institution and activate…"), permissions=["change"])
    def assign_to_institution(self, request: HttpRequest, queryset: models.QuerySet) -> HttpResponse | None:
        form = AssignDeploymentForm(request.POST if "confirm" in request.POST else None)
        if "confirm" in request.POST and form.is_valid():
            done, refused = 0, []
            for deployment in queryset:
                try:
                    services.assign_deployment(
                        deployment=deployment,
                        institution=form.cleaned_data["institution"],
                        activate=form.cleaned_data["activate"],
                        acting_user=request.user,
                    )
                    self.log_change(request, deployment, f"Assigned to {form.cleaned_data['institution']}")
                    done += 1
                except ValidationError as error:
                    refused.append(" ".join(error.messages))
            if done:
                self.message_user(request, assigned_message(done, form.cleaned_data["institution"], activated=form.cleaned_data["activate"]))
            for message in refused:
                self.message_user(request, message, messages.ERROR)
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": _("Assign deployments to an institution"),
            "deployments": queryset.select_related("registration", "ownership__institution", "platform_instance"),
            "form": form,
            "opts": self.opts,
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
            "action": "assign_to_institution",
        }
        return TemplateResponse(request, "admin/lti_tool/ltideployment/assign.html", context)

"""LTI registrations in the admin: presets, write-only keys, the tool configuration hand-off."""
from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import models
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.decorators import method_decorator
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _
from django.views.decorators.debug import sensitive_post_parameters
from lti_tool.admin import LtiRegistrationAdmin as BaseLtiRegistrationAdmin
from lti_tool.models import LtiDeployment, LtiRegistration

from .. import tool_configuration
from ..keys import fingerprint, public_pem
from ..models import (
    Institution, LmsFamily, RegistrationProfile,
)
from .audit_trail import AuditedAdminMixin


# --- Registrations ----------------------------------------------------------------------------


class RegistrationProfileInline(admin.StackedInline):
    model = RegistrationProfile
    can_delete = False
    min_num = 1
    max_num = 1
    fields = ["lms_family", "max_requests_in_flight", "frame_origins"]
    verbose_name_plural = _("LMS")


class RegistrationDeploymentInline(admin.TabularInline):
    model = LtiDeployment
    extra = 0
    fields = ["deployment_id", "is_active", "owner"]
    readonly_fields = ["owner"]
    show_change_link = True

    def get_queryset(self, request: HttpRequest) -> models.QuerySet:
        return super().get_queryset(request).select_related("ownership__institution")

    @admin.display(description=_("institution"))
    def owner(self, deployment: LtiDeployment) -> str:
        ownership = getattr(deployment, "ownership", None)
        return str(ownership.institution) if ownership else _("— pending assignment —")


class WriteOnlyTextarea(forms.Textarea):
    """A textarea that never renders a value: what is stored (or was just pasted) is not sent back."""

    def format_value(self, value: Any) -> None:
        return None


class WriteOnlyKeyField(forms.CharField):
    """A key PEM that can be replaced but is never shown; blank keeps the stored key."""

    widget = WriteOnlyTextarea(attrs={"rows": 4, "autocomplete": "off", "spellcheck": "false"})

    def has_changed(self, initial: Any, data: Any) -> bool:
        return bool((data or "").strip())


class RegistrationForm(forms.ModelForm):
    """The registration, with its static key pair write-only (shown as a fingerprint, see RegistrationAdmin).

    A registration's own key pair signs its service token requests and deep-linking answers
    (institutions.keys.tool_signing_key), so staff may set one; without it the tool's published keys sign.
    """

    public_key = WriteOnlyKeyField(
        required=False, label=_("public key"),
        help_text=_("Optional: derived from the private key. Paste a PEM to replace the stored one; leave blank to keep it."),
    )
    private_key = WriteOnlyKeyField(
        required=False, label=_("private key"),
        help_text=_("Paste a PEM to replace the stored one: it is never shown again. Leave blank to keep it."),
    )
    remove_key_pair = forms.BooleanField(
        required=False, label=_("Remove the static key pair"),
        help_text=_("The tool's published keys (JWKS) then sign for this registration."),
    )

    institution_name = ""  # set by RegistrationAdmin.get_form when the add page was opened for an institution

    class Meta:
        model = LtiRegistration
        fields = "__all__"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name, text in tool_configuration.REGISTRATION_FIELD_HELP.items():
            if name in self.fields:
                self.fields[name].help_text = text
        if "name" in self.fields:
            self.fields["name"].required = False  # blank: named after its LMS and issuer (clean)
            # Admin help texts are rendered as HTML: no angle brackets.
            self.fields["name"].help_text = _("Leave blank for “LMS — issuer host” (or “institution — LMS”).")

    def clean_issuer(self) -> str:
        return tool_configuration.normalised_issuer(self.cleaned_data.get("issuer") or "")

    def clean_client_id(self) -> str:
        client_id = (self.cleaned_data.get("client_id") or "").strip()
        if any(char.isspace() or not char.isprintable() for char in client_id):
            raise ValidationError(
                _("A client ID has no spaces or invisible characters inside: copy it again from the LMS.")
            )
        return client_id

    @property
    def changed_data(self) -> list[str]:
        # A key field changed when its resulting value differs from the stored one (removal included).
        changed = [name for name in super().changed_data if name not in ("public_key", "private_key", "remove_key_pair")]
        if hasattr(self, "cleaned_data"):
            changed += [
                name for name in ("public_key", "private_key")
                if name in self.cleaned_data and self.cleaned_data[name] != (self.initial.get(name) or "")
            ]
        return changed

    def _clean_key_pair(self, cleaned: dict) -> None:
        pasted_private, pasted_public = cleaned.get("private_key") or "", cleaned.get("public_key") or ""
        if cleaned.get("remove_key_pair"):
            if pasted_private or pasted_public:
                self.add_error("remove_key_pair", _("Either paste a new key pair or remove the key pair, not both."))
            cleaned["private_key"] = cleaned["public_key"] = ""
            return
        if "PRIVATE KEY" in pasted_public:
            self.add_error("public_key", _("This is a private key: paste it in the private key box."))
            pasted_public = ""
        elif pasted_public and not public_pem(pasted_public):
            self.add_error("public_key", _("Not a readable public key: paste the whole PEM, BEGIN and END lines included."))
            pasted_public = ""
        if pasted_private and ("PRIVATE KEY" not in pasted_private or not public_pem(pasted_private)):
            self.add_error("private_key", _("Not a readable private key: paste the whole PEM, BEGIN and END lines included."))
            pasted_private = ""
        private = pasted_private or self.instance.private_key or ""
        public = pasted_public or (public_pem(pasted_private) if pasted_private else "") or self.instance.public_key or ""
        if private and public and fingerprint(private) != fingerprint(public):
            self.add_error(
                "private_key" if pasted_private else "public_key",
                _("The public key does not belong to the private key (their fingerprints differ)."),
            )
        cleaned["private_key"], cleaned["public_key"] = private, public

    def clean(self) -> dict:
        cleaned = super().clean()
        self._clean_key_pair(cleaned)
        issuer = cleaned.get("issuer") or ""
        if issuer:
            try:
                forms.URLField(assume_scheme="https").clean(issuer)
            except ValidationError:
                self.add_error("issuer", _("The issuer must be a URL, e.g. https://canvas.instructure.com."))
        for field in ["issuer", "auth_url", "token_url", "keyset_url"]:
            value = cleaned.get(field) or ""
            if tool_configuration.PLACEHOLDER in value or "CLIENT_ID" in value:
                self.add_error(field, _("Replace the placeholder (HOST.example or CLIENT_ID) with this LMS's value."))
            elif field != "issuer" and value and (refusal := tool_configuration.endpoint_refusal(value)):
                self.add_error(field, refusal)
        self._refuse_registered_twice(cleaned)
        if not cleaned.get("name") and "name" in self.fields:
            cleaned["name"] = tool_configuration.default_registration_name(
                lms=self._lms_label(), institution=self.institution_name, issuer=cleaned.get("issuer") or ""
            )
            if not cleaned["name"]:
                self.add_error("name", _("Name this registration (e.g. \"North College — Moodle\")."))
        return cleaned

    def _refuse_registered_twice(self, cleaned: dict) -> None:
        """A form error naming the registration that already has this issuer and client ID (any trailing slash)."""
        issuer, client_id = cleaned.get("issuer"), cleaned.get("client_id")
        if not issuer or not client_id or "client_id" in self.errors:
            return
        existing = (
            LtiRegistration.objects.filter(issuer__in=[issuer, f"{issuer}/"], client_id=client_id)
            .exclude(pk=self.instance.pk)
            .first()
        )
        if existing is not None:
            # On client_id, so the model's own (issuer, client_id) check does not say it a second time.
            self.add_error("client_id", _("A registration with this issuer and client ID already exists: “%s”.") % existing)

    def _lms_label(self) -> str:
        # The LMS is chosen in the profile inline, posted beside this form.
        family = self.data.get("profile-0-lms_family", "")
        return LmsFamily(family).label if family in LmsFamily.values and family != LmsFamily.OTHER else "LMS"


admin.site.unregister(LtiRegistration)  # django-lti's own admin, replaced by ours below


@admin.register(LtiRegistration)
class RegistrationAdmin(AuditedAdminMixin, BaseLtiRegistrationAdmin):
    form = RegistrationForm
    list_display = ["name", "lms", "issuer", "client_id", "deployment_count", "is_active", "tool_configuration_link"]
    list_filter = ["profile__lms_family", "is_active"]
    list_select_related = ["profile"]
    search_fields = ["name", "issuer", "client_id"]
    readonly_fields = ["uuid", "key_fingerprint"]
    inlines = [RegistrationProfileInline, RegistrationDeploymentInline]
    change_form_template = "admin/lti_tool/ltiregistration/change_form.html"

    def get_fieldsets(self, request: HttpRequest, obj: LtiRegistration | None = None) -> list:
        main = BaseLtiRegistrationAdmin.fieldsets[0]  # django-lti's own fields; its key fieldset is replaced
        # Key material is a fingerprint for everyone; who may change the registration may paste a new pair.
        if obj is None:
            key_fields = ["public_key", "private_key"]
        elif self.has_change_permission(request, obj):
            key_fields = ["key_fingerprint", "public_key", "private_key", "remove_key_pair"]
        else:
            key_fields = ["key_fingerprint"]
        return [
            main,
            (_("Static key pair"), {
                "description": _("For platforms that cannot fetch the tool's JWKS. Private keys are never shown."),
                "fields": key_fields,
                "classes": ["collapse"],
            }),
        ]

    @method_decorator(sensitive_post_parameters("private_key"))  # kept out of Django's error reports too
    def changeform_view(self, *args: Any, **kwargs: Any) -> HttpResponse:
        return super().changeform_view(*args, **kwargs)

    @admin.display(description=_("key"))
    def key_fingerprint(self, registration: LtiRegistration) -> str:
        if not (registration.public_key or registration.private_key):
            return _("No static key: the tool's published keys (JWKS) sign for this registration.")
        shown = fingerprint(registration.public_key or registration.private_key)
        stored = _("private key stored, never shown") if registration.private_key else _("no private key")
        return f"{shown} ({stored})"

    def get_queryset(self, request: HttpRequest) -> models.QuerySet:
        return super().get_queryset(request).annotate(_deployments=Count("deployments"))

    @admin.display(description=_("LMS"), ordering="profile__lms_family")
    def lms(self, registration: LtiRegistration) -> str:
        profile = getattr(registration, "profile", None)
        return profile.get_lms_family_display() if profile else "—"

    @admin.display(description=_("deployments"), ordering="_deployments")
    def deployment_count(self, registration: LtiRegistration) -> int:
        return registration._deployments

    @admin.display(description=_("tool configuration"))
    def tool_configuration_link(self, registration: LtiRegistration) -> str:
        url = reverse("admin:lti_tool_ltiregistration_tool_configuration", args=[registration.pk])
        return format_html('<a href="{}">{}</a>', url, _("For the LMS admin"))

    def _institution_from_query(self, request: HttpRequest) -> Institution | None:
        # The add page opened from an institution's page ("Register an LMS for …") knows whose LMS it is.
        pk = request.GET.get("institution", "")
        return Institution.objects.filter(pk=pk).first() if pk.isdigit() else None

    def get_form(self, request: HttpRequest, obj: Any = None, **kwargs: Any) -> type[forms.ModelForm]:
        form = super().get_form(request, obj, **kwargs)
        institution = self._institution_from_query(request) if obj is None else None
        if institution is not None:
            form = type(form.__name__, (form,), {"institution_name": str(institution)})
        return form

    def get_changeform_initial_data(self, request: HttpRequest) -> dict:
        initial = super().get_changeform_initial_data(request)
        initial.pop("institution", None)  # a query parameter of ours, not a registration field
        preset = tool_configuration.PRESETS.get(request.GET.get("preset", ""))
        if preset:
            institution = self._institution_from_query(request)
            initial.update(
                name=tool_configuration.default_registration_name(
                    lms=LmsFamily(preset.lms_family).label,
                    institution=str(institution) if institution else "",
                    issuer=preset.issuer,
                ),
                issuer=preset.issuer,
                auth_url=preset.auth_url,
                token_url=preset.token_url,
                keyset_url=preset.keyset_url,
                audience=preset.audience,
            )
        return initial

    def get_formset_kwargs(self, request: HttpRequest, obj: Any, inline: Any, prefix: str) -> dict:
        kwargs = super().get_formset_kwargs(request, obj, inline, prefix)
        preset = tool_configuration.PRESETS.get(request.GET.get("preset", ""))
        if preset and isinstance(inline, RegistrationProfileInline) and request.method == "GET":
            kwargs["initial"] = [{"lms_family": preset.lms_family}]
        return kwargs

    def render_change_form(self, request: HttpRequest, context: dict, *args: Any, **kwargs: Any) -> HttpResponse:
        context["presets"] = tool_configuration.PRESETS
        context["for_institution"] = self._institution_from_query(request)
        return super().render_change_form(request, context, *args, **kwargs)

    def get_urls(self) -> list:
        return [
            path(
                "<path:object_id>/tool-configuration/",
                self.admin_site.admin_view(self.tool_configuration_view),
                name="lti_tool_ltiregistration_tool_configuration",
            ),
            *super().get_urls(),
        ]

    def tool_configuration_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        registration = get_object_or_404(self.get_queryset(request).select_related("profile"), pk=object_id)
        if not self.has_view_permission(request, registration):
            raise PermissionDenied
        base_url = request.build_absolute_uri("/")
        profile = getattr(registration, "profile", None)
        lms_family = profile.lms_family if profile else "other"
        context = {
            **self.admin_site.each_context(request),
            "title": _("Tool configuration for %s") % registration,
            "registration": registration,
            "opts": self.opts,
            "original": registration,
            "urls": tool_configuration.tool_urls(base_url, registration),
            "scopes": tool_configuration.TOOL_SCOPES,
            "custom_parameters": tool_configuration.custom_parameters(lms_family),
            "custom_parameters_text": "\n".join(
                f"{k}={v}" for k, v in tool_configuration.custom_parameters(lms_family).items()
            ),
            "canvas_json": json.dumps(tool_configuration.canvas_developer_key(base_url, registration), indent=2),
            "is_canvas": lms_family == "canvas",
        }
        return TemplateResponse(request, "admin/lti_tool/ltiregistration/tool_configuration.html", context)

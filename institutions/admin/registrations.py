"""LTI registrations in the admin: presets, drafts (no client ID yet), write-only keys, the hand-off pages per LMS."""
from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import models
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, path, reverse
from django.utils.decorators import method_decorator
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _
from django.views.decorators.debug import sensitive_post_parameters
from lti_tool.admin import LtiRegistrationAdmin as BaseLtiRegistrationAdmin
from lti_tool.models import LtiDeployment, LtiRegistration

from .. import handoff, services, tool_configuration
from ..keys import fingerprint, public_pem
from ..models import (
    AuditEntry, Course, Institution, LmsFamily, RegistrationInvitation, RegistrationProfile,
)
from ..roles import INTEGRATION
from .audit_trail import AuditedAdminMixin
from .deployments import kept_by_courses


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

    deployments_institution = forms.ModelChoiceField(
        queryset=Institution.objects.all(), required=False, label=_("new deployments belong to"),
        help_text=_("Deployment IDs added below are assigned to this institution. Blank: they wait as pending deployments."),
    )

    institution_name = ""  # set by RegistrationAdmin.get_form when the add page was opened for an institution
    suggested_institution: Institution | None = None  # set by RegistrationAdmin.get_form

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
        if "client_id" in self.fields:
            self.fields["client_id"].required = False  # blank: a draft (clean)
            self.fields["client_id"].help_text = _(
                "Leave blank to save a draft: its tool URLs are shown at once, it matches no launch, and typing the "
                "client ID later makes it live. "
            ) + tool_configuration.REGISTRATION_FIELD_HELP["client_id"]
            if self.instance.pk and tool_configuration.is_draft(self.instance):
                self.initial["client_id"] = ""  # the placeholder is ours, never shown
        if "deployments_institution" in self.fields and self.suggested_institution is not None:
            self.fields["deployments_institution"].initial = self.suggested_institution.pk

    def clean_issuer(self) -> str:
        return tool_configuration.normalised_issuer(self.cleaned_data.get("issuer") or "")

    def clean_client_id(self) -> str:
        client_id = (self.cleaned_data.get("client_id") or "").strip()
        if any(char.isspace() or not char.isprintable() for char in client_id):
            raise ValidationError(
                _("A client ID has no spaces or invisible characters inside: copy it again from the LMS.")
            )
        if tool_configuration.is_draft_client_id(client_id):
            raise ValidationError(_("This is not a client ID an LMS issued: copy it from the LMS, or leave it blank for a draft."))
        return client_id

    def _clean_draft(self, cleaned: dict) -> None:
        """Blank client ID: a draft (placeholder client ID, switched off). A draft given its client ID goes live."""
        was_draft = bool(self.instance.pk) and tool_configuration.is_draft(self.instance)
        if "client_id" in self.errors:
            return
        if cleaned.get("client_id"):
            if was_draft:
                cleaned["is_active"] = True
            return
        if self.instance.pk and not was_draft:
            self.add_error("client_id", _(
                "This registration is live: its client ID cannot be removed. Switch it off (is active) instead."
            ))
            return
        cleaned["client_id"] = self.instance.client_id if was_draft else tool_configuration.new_draft_client_id()
        cleaned["is_active"] = False  # matches no launch until the LMS has issued its client ID

    @property
    def changed_data(self) -> list[str]:
        # A key field changed when its resulting value differs from the stored one (removal included).
        changed = [name for name in super().changed_data if name not in ("public_key", "private_key", "remove_key_pair")]
        if hasattr(self, "cleaned_data"):
            changed += [
                name for name in ("public_key", "private_key")
                if name in self.cleaned_data and self.cleaned_data[name] != (self.initial.get(name) or "")
            ]
            # A draft going live switches itself on, whatever the checkbox said.
            if "is_active" not in changed and "is_active" in self.cleaned_data and self.instance.pk:
                if self.cleaned_data["is_active"] != self.initial.get("is_active"):
                    changed.append("is_active")
        return [name for name in changed if name != "deployments_institution"]

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
        self._clean_draft(cleaned)
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
        if not issuer or not client_id or "client_id" in self.errors or tool_configuration.is_draft_client_id(client_id):
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


class RegistrationStateFilter(admin.SimpleListFilter):
    title = _("state")
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list:
        return [("draft", _("Draft (no client ID yet)")), ("live", _("Live")), ("off", _("Switched off"))]

    def queryset(self, request: HttpRequest, queryset: models.QuerySet) -> models.QuerySet:
        draft = models.Q(client_id__startswith=tool_configuration.DRAFT_CLIENT_ID_PREFIX)
        if self.value() == "draft":
            return queryset.filter(draft)
        if self.value() == "live":
            return queryset.exclude(draft).filter(is_active=True)
        if self.value() == "off":
            return queryset.exclude(draft).filter(is_active=False)
        return queryset


def opened_for(registration: LtiRegistration) -> Institution | None:
    """The institution whose deployments this registration serves: its deployments' one owner, else the one
    its add page was opened for (recorded on its creation's audit entry)."""
    owners = list(
        Institution.objects.filter(deployments__deployment__registration=registration).distinct()[:2]
    )
    if owners:
        return owners[0] if len(owners) == 1 else None
    created = (
        AuditEntry.objects.filter(
            action="ltiregistration.created", object_id=str(registration.pk), institution__isnull=False
        ).select_related("institution").first()
    )
    return created.institution if created else None


admin.site.unregister(LtiRegistration)  # django-lti's own admin, replaced by ours below


@admin.register(LtiRegistration)
class RegistrationAdmin(AuditedAdminMixin, BaseLtiRegistrationAdmin):
    form = RegistrationForm
    list_display = ["name", "lms", "issuer", "shown_client_id", "deployment_count", "state", "tool_configuration_link"]
    list_filter = [RegistrationStateFilter, "profile__lms_family", "is_active"]
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
        may_edit = self.has_add_permission(request) if obj is None else self.has_change_permission(request, obj)
        deployments = [(_("Deployments"), {"fields": ["deployments_institution"]})] if may_edit else []
        return [
            main,
            *deployments,
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

    @admin.display(description=_("client ID"), ordering="client_id")
    def shown_client_id(self, registration: LtiRegistration) -> str:
        return tool_configuration.shown_client_id(registration)

    @admin.display(description=_("state"))
    def state(self, registration: LtiRegistration) -> str:
        if tool_configuration.is_draft(registration):
            return _("Draft")
        return _("Live") if registration.is_active else _("Switched off")

    def _changes(self, form: forms.ModelForm, *, adding: bool) -> dict:
        # The audit trail reads "— not issued yet —", never a draft's placeholder client ID.
        changes = super()._changes(form, adding=adding)
        if isinstance(form, RegistrationForm) and "client_id" in changes:
            old, new = changes["client_id"]
            changes["client_id"] = (
                tool_configuration.NOT_ISSUED_YET if not adding and not old else old,
                tool_configuration.NOT_ISSUED_YET if tool_configuration.is_draft_client_id(new or "") else new,
            )
        changes.pop("deployments_institution", None)
        return changes

    def save_model(self, request: HttpRequest, obj: LtiRegistration, form: forms.ModelForm, change: bool) -> None:
        if not change:
            # Read by institution_of for the creation's audit entry: whose LMS this is (opened_for reads it back).
            obj.institution = form.cleaned_data.get("deployments_institution") or self._institution_from_query(request)
        super().save_model(request, obj, form, change)

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        super().save_formset(request, form, formset, change)
        institution = form.cleaned_data.get("deployments_institution")
        if formset.model is LtiDeployment and institution is not None:
            for deployment in formset.new_objects:
                services.assign_deployment(
                    deployment=deployment, institution=institution, activate=False, acting_user=request.user
                )

    def response_add(self, request: HttpRequest, obj: LtiRegistration, post_url_continue: str | None = None) -> HttpResponse:
        # Its URLs at once: the LMS admin needs them before (Moodle, D2L) or with (Canvas) the client ID.
        if "_addanother" in request.POST or "_continue" in request.POST or "_popup" in request.POST:
            return super().response_add(request, obj, post_url_continue)
        if tool_configuration.is_draft(obj):
            text = _("Draft “%s” saved: hand these values to the LMS admin, then type the client ID the LMS issues.")
        else:
            text = _("Registration “%s” saved: hand these values to the LMS admin.")
        self.message_user(request, text % obj, messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:lti_tool_ltiregistration_tool_configuration", args=[obj.pk]))

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
        suggested = institution if obj is None else (self._institution_from_query(request) or opened_for(obj))
        if suggested is not None:
            form = type(form.__name__, (form,), {"suggested_institution": suggested})
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

    def has_delete_permission(self, request: HttpRequest, obj: LtiRegistration | None = None) -> bool:
        # Its deployments' courses protect it (Course.deployment is PROTECT): Delete would only end on "Cannot delete".
        return super().has_delete_permission(request, obj) and (
            obj is None or not Course.objects.filter(deployment__registration=obj).exists()
        )

    def render_change_form(self, request: HttpRequest, context: dict, *args: Any, obj: Any = None, **kwargs: Any) -> HttpResponse:
        if obj is not None and super().has_delete_permission(request, obj):
            context["kept_by_courses"] = kept_by_courses(Course.objects.filter(deployment__registration=obj))
        context["presets"] = tool_configuration.PRESETS
        context["for_institution"] = self._institution_from_query(request)
        preset = tool_configuration.PRESETS.get(request.GET.get("preset", ""))
        if preset is not None:
            context["preset"] = preset
            context["onboarding_order"] = tool_configuration.ONBOARDING_ORDER.get(preset.lms_family, [])
        else:
            context["onboarding_orders"] = [
                (LmsFamily(family).label, steps) for family, steps in tool_configuration.ONBOARDING_ORDER.items()
            ]
        context["is_draft"] = obj is not None and tool_configuration.is_draft(obj)
        return super().render_change_form(request, context, *args, obj=obj, **kwargs)

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
        """The hand-off page: every value the LMS admin needs, per LMS, with where it goes. Public values only."""
        registration = get_object_or_404(self.get_queryset(request).select_related("profile"), pk=object_id)
        if not self.has_view_permission(request, registration):
            raise PermissionDenied
        base_url = request.build_absolute_uri("/")
        profile = getattr(registration, "profile", None)
        lms_family = profile.lms_family if profile else LmsFamily.OTHER
        urls = tool_configuration.tool_urls(base_url, registration)
        try:
            invitation_url = reverse("admin:institutions_registrationinvitation_add")
        except NoReverseMatch:  # Dynamic Registration links not installed
            invitation_url = ""
        # Offered as a link only to who may make one; others are told whom to ask.
        may_invite = bool(invitation_url) and self.admin_site.get_model_admin(RegistrationInvitation).has_add_permission(request)
        context = {
            **self.admin_site.each_context(request),
            "title": _("Tool configuration for %s") % registration,
            "registration": registration,
            "opts": self.opts,
            "original": registration,
            "urls": urls,
            "is_draft": tool_configuration.is_draft(registration),
            "client_id": tool_configuration.shown_client_id(registration),
            "deployment_ids": list(registration.deployments.values_list("deployment_id", flat=True)[:20]),
            "may_change": self.has_change_permission(request, registration),
            "base_url_warning": tool_configuration.base_url_warning(base_url),
            "handoffs": handoff.handoffs(base_url, registration, lms_family),
            "scopes": tool_configuration.TOOL_SCOPES,
            "custom_parameters": tool_configuration.custom_parameters(lms_family),
            "custom_parameters_text": tool_configuration.custom_parameters_text(lms_family),
            "canvas_json": json.dumps(tool_configuration.canvas_developer_key(base_url, registration), indent=2),
            "canvas_json_download": f"{urls['canvas_json']}?download=1",
            "invitation_url": invitation_url,
            "may_invite": may_invite,
            "inviting_role": INTEGRATION,
            "is_canvas": lms_family == LmsFamily.CANVAS,
        }
        return TemplateResponse(request, "admin/lti_tool/ltiregistration/tool_configuration.html", context)

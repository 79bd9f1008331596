"""The staff UI for tenants and onboarding. Every change here is audited."""
from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import models, transaction
from django.db.models import Count, Q
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.decorators import method_decorator
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext_lazy as _
from django.views.decorators.debug import sensitive_post_parameters
from lti_tool.admin import LtiRegistrationAdmin as BaseLtiRegistrationAdmin
from lti_tool.models import Key, LtiDeployment, LtiRegistration

from . import services, tool_configuration
from .audit import institution_of, record_staff_change
from .key_rotation import start_rotation
from .keys import fingerprint, next_phase_change, public_pem
from .models import (
    AuditEntry, Course, CourseDatesSource, DeploymentOwnership, GradePolicy, Institution, LmsFamily, RegistrationProfile,
)
from .redaction import redact


class AuditedAdminMixin:
    """Records every add, change and delete made through a ModelAdmin, with old → new values.

    Django's LogEntry keeps only a message; support needs the values, so the diff goes to AuditEntry.
    """

    def _changes(self, form: forms.ModelForm, *, adding: bool) -> dict[str, tuple[Any, Any]]:
        fields = form.changed_data if not adding else [f for f in form.cleaned_data if f in form.fields]
        return {
            name: (None if adding else form.initial.get(name), form.cleaned_data.get(name))
            for name in fields
            if not isinstance(form.fields.get(name), forms.FileField)
        }

    def save_model(self, request: HttpRequest, obj: models.Model, form: forms.ModelForm, change: bool) -> None:
        with transaction.atomic():
            super().save_model(request, obj, form, change)  # type: ignore[misc]
            changes = self._changes(form, adding=not change)
            if changes or not change:
                record_staff_change(
                    actor=request.user,
                    action=f"{obj._meta.model_name}.{'changed' if change else 'created'}",
                    obj=obj,
                    institution=institution_of(obj),
                    changes=changes,
                )

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        with transaction.atomic():
            super().save_formset(request, form, formset, change)  # type: ignore[misc]
            for inline_form in formset.forms:
                obj = inline_form.instance
                if obj.pk is None or not inline_form.has_changed():
                    continue
                adding = inline_form.initial == {} or "id" not in inline_form.initial
                record_staff_change(
                    actor=request.user,
                    action=f"{obj._meta.model_name}.{'created' if adding else 'changed'}",
                    obj=obj,
                    institution=institution_of(obj),
                    changes=self._changes(inline_form, adding=adding),
                )
            for obj in formset.deleted_objects:
                record_staff_change(
                    actor=request.user, action=f"{obj._meta.model_name}.deleted", obj=obj, institution=institution_of(obj)
                )

    def delete_model(self, request: HttpRequest, obj: models.Model) -> None:
        with transaction.atomic():
            record_staff_change(
                actor=request.user, action=f"{obj._meta.model_name}.deleted", obj=obj, institution=institution_of(obj)
            )
            super().delete_model(request, obj)  # type: ignore[misc]

    def delete_queryset(self, request: HttpRequest, queryset: models.QuerySet) -> None:
        with transaction.atomic():
            for obj in queryset:
                record_staff_change(
                    actor=request.user, action=f"{obj._meta.model_name}.deleted", obj=obj, institution=institution_of(obj)
                )
            super().delete_queryset(request, queryset)  # type: ignore[misc]


def change_text(entry: AuditEntry) -> str:
    """An audit entry's changes as "field: old → new; …" (redacted again: rows predating redaction stay safe)."""
    return redact("; ".join(f"{field}: {old} → {new}" for field, (old, new) in entry.changes.items()))


def audit_history_html(entries: list[AuditEntry]) -> str:
    if not entries:
        return format_html("<em>{}</em>", _("No changes recorded yet."))
    rows = format_html_join(
        "",
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        (
            (
                entry.acted_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
                entry.actor_name,
                entry.action,
                change_text(entry),
            )
            for entry in entries
        ),
    )
    return format_html(
        '<table class="audit-history"><thead><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr></thead>'
        "<tbody>{}</tbody></table>",
        _("When"),
        _("Who"),
        _("What"),
        _("Old → new"),
        rows,
    )


# --- Institutions -----------------------------------------------------------------------------


class DeploymentOwnershipInline(admin.TabularInline):
    model = DeploymentOwnership
    extra = 0
    fields = ["deployment", "deployment_status", "assigned_at", "assigned_by"]
    readonly_fields = ["deployment", "deployment_status", "assigned_at", "assigned_by"]
    can_delete = False
    verbose_name_plural = _("Deployments (assign new ones from the LTI deployments list)")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> models.QuerySet:
        return super().get_queryset(request).select_related("deployment__registration", "assigned_by")

    @admin.display(description=_("status"))
    def deployment_status(self, ownership: DeploymentOwnership) -> str:
        return _("active") if ownership.deployment.is_active else _("inactive")


class GradePolicyForm(forms.Form):
    grade_policy = forms.ChoiceField(choices=GradePolicy.choices, widget=forms.RadioSelect, label=_("Grade policy"))


class InstitutionForm(forms.ModelForm):
    class Meta:
        model = Institution
        fields = ["name", "slug", "is_active"]

    def clean_slug(self) -> str:
        # Slugs are stored lower-case and unique in any case (the institution_slug_unique_ci constraint).
        slug = (self.cleaned_data.get("slug") or "").lower()
        existing = Institution.objects.filter(slug__iexact=slug).exclude(pk=self.instance.pk).first()
        if existing is not None:
            raise ValidationError(
                _("An institution with this slug already exists: %(name)s (“%(slug)s”; slugs ignore case).")
                % {"slug": existing.slug, "name": existing}
            )
        return slug


@admin.register(Institution)
class InstitutionAdmin(AuditedAdminMixin, admin.ModelAdmin):
    form = InstitutionForm
    list_display = ["name", "slug", "grade_policy", "is_active", "deployment_count", "course_count", "created_at"]
    list_filter = ["grade_policy", "is_active"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [DeploymentOwnershipInline]
    # The grade policy is changed only through its own view, as Django does for passwords.
    readonly_fields = ["grade_policy_display", "courses_link", "grade_policy_history", "audit_link"]
    change_form_template = "admin/institutions/institution/change_form.html"

    def get_fieldsets(self, request: HttpRequest, obj: Institution | None = None) -> list:
        main = ["name", "slug", "is_active"]
        if obj is None:
            return [(None, {"fields": main})]
        return [
            (None, {"fields": main}),
            (_("Grade policy"), {"fields": ["grade_policy_display", "grade_policy_history"]}),
            (_("Courses and history"), {"fields": ["courses_link", "audit_link"]}),
        ]

    def get_queryset(self, request: HttpRequest) -> models.QuerySet:
        return (
            super()
            .get_queryset(request)
            .annotate(_deployments=Count("deployments", distinct=True), _courses=Count("courses", distinct=True))
        )

    @admin.display(description=_("deployments"), ordering="_deployments")
    def deployment_count(self, institution: Institution) -> int:
        return institution._deployments

    @admin.display(description=_("courses"), ordering="_courses")
    def course_count(self, institution: Institution) -> int:
        return institution._courses

    @admin.display(description=_("grade policy"))
    def grade_policy_display(self, institution: Institution) -> str:
        return format_html("<strong>{}</strong>", institution.get_grade_policy_display())

    @admin.display(description=_("policy changes"))
    def grade_policy_history(self, institution: Institution) -> str:
        entries = list(institution.audit_entries.filter(action="grade_policy.changed")[:20])
        return audit_history_html(entries)

    @admin.display(description=_("courses"))
    def courses_link(self, institution: Institution) -> str:
        url = reverse("admin:institutions_course_changelist") + f"?institution__id__exact={institution.pk}"
        return format_html('<a href="{}">{} →</a>', url, _("%(n)s courses") % {"n": institution.courses.count()})

    @admin.display(description=_("all staff changes"))
    def audit_link(self, institution: Institution) -> str:
        url = reverse("admin:institutions_auditentry_changelist") + f"?institution__id__exact={institution.pk}"
        return format_html('<a href="{}">{} →</a>', url, _("Audit trail"))

    def get_urls(self) -> list:
        return [
            path(
                "<path:object_id>/grade-policy/",
                self.admin_site.admin_view(self.grade_policy_view),
                name="institutions_institution_grade_policy",
            ),
            *super().get_urls(),
        ]

    def grade_policy_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        institution = get_object_or_404(self.get_queryset(request), pk=object_id)
        if not request.user.has_perm(services.CHANGE_GRADE_POLICY_PERMISSION):
            raise PermissionDenied
        form = GradePolicyForm(request.POST or None, initial={"grade_policy": institution.grade_policy})
        if request.method == "POST" and form.is_valid():
            changed = services.change_grade_policy(
                institution=institution, policy=form.cleaned_data["grade_policy"], acting_user=request.user
            )
            if changed:
                self.log_change(request, institution, [{"changed": {"fields": ["grade_policy"]}}])
                self.message_user(request, _("Grade policy changed to %s.") % GradePolicy(form.cleaned_data["grade_policy"]).label)
            else:
                self.message_user(request, _("The grade policy was already that; nothing changed."), messages.INFO)
            return HttpResponseRedirect(reverse("admin:institutions_institution_change", args=[institution.pk]))
        context = {
            **self.admin_site.each_context(request),
            "title": _("Change grade policy: %s") % institution,
            "institution": institution,
            "form": form,
            "opts": self.opts,
            "original": institution,
            "has_view_permission": True,
        }
        return TemplateResponse(request, "admin/institutions/grade_policy.html", context)


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

    def render_change_form(self, request: HttpRequest, context: dict, *args: Any, obj: Any = None, **kwargs: Any) -> HttpResponse:
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
                self.message_user(request, _("%(n)d deployment(s) assigned to %(inst)s.") % {"n": done, "inst": form.cleaned_data["institution"]})
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


# --- Courses, keys and the audit trail --------------------------------------------------------


class CourseForm(forms.ModelForm):
    class Meta:
        model = Course
        fields = ["starts_at", "ends_at"]

    def clean(self) -> dict:
        cleaned = super().clean()
        starts, ends = cleaned.get("starts_at"), cleaned.get("ends_at")
        if starts and ends and ends < starts:
            raise ValidationError(_("The course cannot end before it starts."))
        return cleaned


@admin.register(Course)
class CourseAdmin(AuditedAdminMixin, admin.ModelAdmin):
    form = CourseForm
    list_display = ["title", "institution", "context_id", "deployment", "starts_at", "ends_at", "dates_source"]
    list_filter = ["institution", "dates_source"]
    list_select_related = ["institution", "context", "deployment__registration"]
    search_fields = ["title", "context__id_on_platform"]
    fields = ["title", "institution", "context", "deployment", "starts_at", "ends_at", "dates_source"]
    readonly_fields = ["title", "institution", "context", "deployment", "dates_source"]
    show_full_result_count = False
    ordering = ["-id"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # courses come from LMS launches

    @admin.display(description=_("LMS course id"), ordering="context__id_on_platform")
    def context_id(self, course: Course) -> str:
        return course.context.id_on_platform

    def save_model(self, request: HttpRequest, obj: Course, form: forms.ModelForm, change: bool) -> None:
        if {"starts_at", "ends_at"} & set(form.changed_data):
            obj.dates_source = CourseDatesSource.SUPPORT
        super().save_model(request, obj, form, change)


@admin.register(Key)
class KeyAdmin(AuditedAdminMixin, admin.ModelAdmin):
    """The tool's signing keys and their rotation (institutions/keys.py). Phases are moved by the rotation only."""

    list_display = ["kid", "phase", "key_fingerprint", "phase_changes", "is_active", "datetime_created"]
    list_filter = ["is_active", "lifecycle__phase"]
    list_select_related = ["lifecycle"]
    fields = ["kid", "phase", "key_fingerprint", "phase_changes", "is_active", "datetime_created"]
    readonly_fields = fields
    actions = ["publish_new_key"]
    ordering = ["-datetime_created"]
    # Keeps the action menu when there is no key at all (Django hides it on an empty list otherwise).
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # keys are generated, never pasted

    @admin.display(description="kid")
    def kid(self, key: Key) -> str:
        return key.as_jwk()["kid"]

    @admin.display(description=_("state"))
    def phase(self, key: Key) -> str:
        state = getattr(key, "lifecycle", None)
        if state is None:
            return _("published, outside rotation") if key.is_active else _("not published")
        return state.get_phase_display()

    @admin.display(description=_("changes phase"))
    def phase_changes(self, key: Key) -> str:
        when = next_phase_change(key)
        return f"{when:%Y-%m-%d %H:%M} UTC" if when else "—"

    @admin.display(description=_("fingerprint"))
    def key_fingerprint(self, key: Key) -> str:
        return fingerprint(key.public_key)  # the tool's private keys are shown to nobody

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        # Rotate acts on no key in particular: it may run with none selected (or none present).
        if (request.method == "POST" and request.POST.get("action") == "publish_new_key"
                and not request.POST.getlist(ACTION_CHECKBOX_NAME)):
            request.POST = request.POST.copy()
            # Django runs an action only with a row ticked; "across all" keeps it from filtering by that row.
            request.POST.setlist(ACTION_CHECKBOX_NAME, ["all"])
            request.POST["select_across"] = "1"
        return super().changelist_view(request, extra_context)

    @admin.action(description=_("Rotate: publish a new key now, sign with it after the lead time, retire the old one "
                                "after the grace period"), permissions=["change"])
    def publish_new_key(self, request: HttpRequest, queryset: models.QuerySet) -> None:
        rotation = start_rotation(actor=request.user)
        self.message_user(request, _(
            "Key %(new)s published. It signs from %(signs)s UTC; the old key stays published until %(retire)s UTC."
        ) % {"new": fingerprint(rotation.new_key.public_key), "signs": f"{rotation.signing_from:%Y-%m-%d %H:%M}",
             "retire": f"{rotation.retire_old_after:%Y-%m-%d %H:%M}"})


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    list_display = ["acted_at", "actor_name", "action", "object_repr", "institution", "change_summary"]
    list_filter = ["action", "institution"]
    list_select_related = ["institution"]
    search_fields = ["actor_name", "object_repr", "action"]
    date_hierarchy = "acted_at"
    show_full_result_count = False
    # The changes as text (change_text), not the stored JSON.
    fields = ["acted_at", "actor", "actor_name", "action", "institution", "content_type", "object_id", "object_repr",
              "change_summary"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description=_("old → new"))
    def change_summary(self, entry: AuditEntry) -> str:
        return change_text(entry)

"""The audit trail in the admin: the mixin that records every staff change, and the trail's own pages."""
from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.db import models, transaction
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext_lazy as _

from ..audit import institution_of, record_staff_change
from ..models import (
    AuditEntry,
)
from ..redaction import redact




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


class RecordOnlyAdmin(admin.ModelAdmin):
    """Rows something else wrote (the audit trail, the LMS's notices): staff read them, never add, change or delete."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(AuditEntry)
class AuditEntryAdmin(RecordOnlyAdmin):
    list_display = ["acted_at", "actor_name", "action", "object_repr", "institution", "change_summary"]
    list_filter = ["action", "institution"]
    list_select_related = ["institution"]
    search_fields = ["actor_name", "object_repr", "action"]
    date_hierarchy = "acted_at"
    show_full_result_count = False
    # The changes as text (change_text), not the stored JSON.
    fields = ["acted_at", "actor", "actor_name", "action", "institution", "content_type", "object_id", "object_repr",
              "change_summary"]

    @admin.display(description=_("old → new"))
    def change_summary(self, entry: AuditEntry) -> str:
        return change_text(entry)

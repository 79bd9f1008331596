"""Audit entries written before key fields were audited as fingerprints may hold a private key: mask it."""
from django.db import migrations, models
from django.db.models.functions import Cast

from institutions.redaction import redact


def _masked(value):
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [_masked(item) for item in value]
    if isinstance(value, dict):
        return {key: _masked(item) for key, item in value.items()}
    return value


def redact_private_keys(apps, schema_editor):
    AuditEntry = apps.get_model("institutions", "AuditEntry")
    leaking = AuditEntry.objects.annotate(text=Cast("changes", models.TextField())).filter(text__contains="PRIVATE KEY")
    for entry in leaking.iterator():
        entry.changes = _masked(entry.changes)
        entry.object_repr = redact(entry.object_repr)
        entry.save(update_fields=["changes", "object_repr"])


class Migration(migrations.Migration):
    dependencies = [("institutions", "0003_registration_extra_frame_origins")]

    operations = [migrations.RunPython(redact_private_keys, migrations.RunPython.noop)]

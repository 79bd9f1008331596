"""The rotation phase of the tool's signing keys, and a signing key from the first `migrate`
(so the JWKS is never empty)."""

import django.db.models.deletion
from django.db import migrations, models


def first_signing_key(apps, schema_editor):
    from institutions.keys import ensure_signing_key

    ensure_signing_key(apps)


class Migration(migrations.Migration):

    dependencies = [
        ('institutions', '0005_institution_slug_unique_case_insensitive'),
        ('lti_tool', '0008_ltideployment_pns_url_and_more'),
    ]

    operations = [
        migrations.CreateModel(
            name='ToolKeyLifecycle',
            fields=[
                ('key', models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, primary_key=True, related_name='lifecycle', serialize=False, to='lti_tool.key')),
                ('phase', models.CharField(choices=[('next', 'next: published, not yet signing'), ('signing', 'signing'), ('retiring', 'retiring: still published, no longer signing'), ('retired', 'retired: not published')], max_length=10)),
                ('published_at', models.DateTimeField()),
                ('signing_from', models.DateTimeField(blank=True, null=True)),
                ('grace', models.DurationField(blank=True, null=True)),
                ('retire_after', models.DateTimeField(blank=True, null=True)),
                ('retired_at', models.DateTimeField(blank=True, null=True)),
            ],
            options={
                'verbose_name': 'tool key lifecycle',
                'constraints': [models.UniqueConstraint(condition=models.Q(('phase', 'signing')), fields=('phase',), name='one_signing_tool_key'), models.CheckConstraint(condition=models.Q(('phase__in', ['next', 'signing', 'retiring', 'retired'])), name='tool_key_phase_valid')],
            },
        ),
        migrations.RunPython(first_signing_key, migrations.RunPython.noop),
    ]

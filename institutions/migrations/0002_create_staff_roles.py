"""Staff roles Support, Integration and Read-only, with their permissions.

Works on an empty database: `sync_staff_roles` creates the permissions first, since Django
makes them only in post_migrate. It takes the historical `apps`, never the live models.
"""
from django.db import migrations

from institutions.roles import ROLE_RULES, sync_staff_roles


def create_staff_roles(apps, schema_editor):
    sync_staff_roles(apps)


def remove_staff_roles(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=list(ROLE_RULES)).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("institutions", "0001_tenants_courses_and_audit"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]
    operations = [migrations.RunPython(create_staff_roles, remove_staff_roles)]

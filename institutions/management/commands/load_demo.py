"""Load the demo: staff logins, a demo institution, and whatever each app's `demo` module adds.

Each installed app may have a `demo.py` with `load_demo(*, base_url: str, stdout) -> None`;
they run in INSTALLED_APPS order, so lower layers exist before the apps that use them.
Idempotent: running it again changes nothing that is already there.
"""
from __future__ import annotations

import importlib

from django.apps import apps
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from institutions.roles import INTEGRATION, READ_ONLY, SUPPORT

DEMO_PASSWORD = "demo-password"
DEMO_STAFF = [("admin", None), ("support", SUPPORT), ("integration", INTEGRATION), ("readonly", READ_ONLY)]


class Command(BaseCommand):
    help = "Load demo data and staff logins (development only)."

    def add_arguments(self, parser):
        parser.add_argument("--base-url", default=settings.TOOL_BASE_URL, help="Where this server is reached.")

    def handle(self, *args, base_url: str, **options):
        if not settings.DEBUG:
            raise CommandError("load_demo creates logins with a known password: it runs only with DEBUG on.")
        with transaction.atomic():
            self._staff()
            for app_config in apps.get_app_configs():
                try:
                    module = importlib.import_module(f"{app_config.name}.demo")
                except ModuleNotFoundError as error:
                    if error.name != f"{app_config.name}.demo":
                        raise
                    continue
                module.load_demo(base_url=base_url.rstrip("/"), stdout=self.stdout)
        self.stdout.write(self.style.SUCCESS("Demo data loaded."))
        self.stdout.write(f"  Admin:       {base_url}/admin/")
        self.stdout.write(
            "  Logins:      " + ", ".join(name for name, _ in DEMO_STAFF) + f"  (password: {DEMO_PASSWORD})"
        )
        if settings.DEMO_SKIP_2FA:
            self.stdout.write("  2nd factor:  skipped for the demo (DEMO_SKIP_2FA=True; refused when DEBUG is off)")
        else:
            self.stdout.write("  2nd factor:  each login sets up an authenticator app (QR code) at its first sign-in")
        if settings.SANDBOX_LMS:
            self.stdout.write(f"  Sandbox LMS: {base_url}/sandbox-lms/")

    def _staff(self) -> None:
        user_model = get_user_model()
        for username, role in DEMO_STAFF:
            user, created = user_model.objects.get_or_create(
                username=username, defaults={"is_staff": True, "is_superuser": role is None}
            )
            if created:
                user.set_password(DEMO_PASSWORD)
                user.save()
            if role:
                user.groups.add(Group.objects.get(name=role))

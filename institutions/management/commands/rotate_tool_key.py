"""`manage.py rotate_tool_key`: start a rotation of the tool's signing key (audited), or show where it stands."""
from __future__ import annotations

import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from lti_tool.models import Key

from institutions import key_rotation, keys


class Command(BaseCommand):
    help = (
        "Publish a new tool signing key now; it signs after --lead-hours (default ROTATION_LEAD_HOURS) and the "
        "current key stays in the JWKS --grace-hours more (default ROTATION_GRACE_HOURS). Audited by fingerprint."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--lead-hours", type=float, help="Hours the new key is published before it signs")
        parser.add_argument("--grace-hours", type=float, help="Hours the old key stays published after the switch")
        parser.add_argument("--now", action="store_true",
                            help="Emergency (a leaked key): sign with the new key at once. LMSes that cache the JWKS "
                                 "refuse our tokens and deep-linking responses until they refetch it.")
        parser.add_argument("--status", action="store_true", help="Only show each key's phase")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["status"]:
            keys.advance_rotation()
            return self._status()
        if options["now"] and options["lead_hours"]:
            raise CommandError("--now and --lead-hours contradict each other")
        for name in ("lead_hours", "grace_hours"):
            if options[name] is not None and options[name] < 0:
                raise CommandError(f"--{name.replace('_', '-')} cannot be negative")
        lead = datetime.timedelta(0) if options["now"] else _hours(options["lead_hours"])
        rotation = key_rotation.start_rotation(actor=None, lead=lead, grace=_hours(options["grace_hours"]))
        self.stdout.write(f"Published {keys.fingerprint(rotation.new_key.public_key)}")
        self.stdout.write(f"It signs from {rotation.signing_from:%Y-%m-%d %H:%M} UTC; the old key "
                          f"{keys.fingerprint(rotation.old_key.public_key) if rotation.old_key else ''} is retired after "
                          f"{rotation.retire_old_after:%Y-%m-%d %H:%M} UTC.")
        if options["now"]:
            self.stderr.write(self.style.WARNING(
                "Signing with the new key now: LMSes that cache the JWKS refuse grade tokens and deep-linking "
                "responses until they refetch it (Moodle refetches on an unknown key; others may take hours)."))
        self._status()

    def _status(self) -> None:
        for key in Key.objects.select_related("lifecycle").order_by("-datetime_created"):
            state = getattr(key, "lifecycle", None)
            when = keys.next_phase_change(key)
            self.stdout.write(f"  {state.phase if state else 'unmanaged':9} {keys.fingerprint(key.public_key)}"
                              + (f"  (changes {when:%Y-%m-%d %H:%M} UTC)" if when else ""))


def _hours(value: float | None) -> datetime.timedelta | None:
    return None if value is None else datetime.timedelta(hours=value)

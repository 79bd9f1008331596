"""The second factor of a staff sign-in: TOTP devices, enrolment, and checking a code.

A staff session counts as signed in to the admin only once django-otp has recorded a verified
device in it (`is_verified`). Wrong codes count as failed logins for django-axes (the same
per username + IP lockout as wrong passwords), on top of the device's own throttling.
"""
from __future__ import annotations

import base64
from typing import Any

import qrcode
import qrcode.image.svg
from axes.handlers.proxy import AxesProxyHandler
from axes.helpers import get_client_ip_address
from django.conf import settings
from django.contrib.auth import logout
from django.contrib.auth.signals import user_login_failed
from django.http import HttpRequest
from django.utils import timezone
from django.utils.translation import ngettext
from django_otp import login as otp_login
from django_otp.models import Device
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from .middleware import mark_active

DEVICE_NAME = "Authenticator app"
BACKUP_DEVICE_NAME = "Backup codes"
BACKUP_CODES = 10


class CodeRefused(Exception):
    """A code that did not verify, with what the person can do about it."""


class LockedOut(Exception):
    """Too many failed logins for this username and address: signed out until the cool-off ends."""


def is_verified(user: Any) -> bool:
    # After auth.login() request.user is the bare user, without django-otp's is_verified().
    check = getattr(user, "is_verified", None)
    return bool(check and check())


def needs_second_factor(user: Any) -> bool:
    """A staff member signed in with a password who has not yet given a code this session."""
    return (
        user.is_authenticated and user.is_active and user.is_staff
        and not settings.DEMO_SKIP_2FA and not is_verified(user)
    )


def confirmed_device(user: Any) -> TOTPDevice | None:
    return TOTPDevice.objects.filter(user=user, confirmed=True).order_by("pk").first()


def enrolment_device(user: Any) -> TOTPDevice:
    """The unconfirmed device shown at enrolment: one per user, kept until confirmed."""
    device = TOTPDevice.objects.filter(user=user, confirmed=False).order_by("pk").first()
    return device or TOTPDevice.objects.create(user=user, name=DEVICE_NAME, confirmed=False)


def secret_text(device: TOTPDevice) -> str:
    """The key as typed into an authenticator app by hand (base32, in groups of four)."""
    secret = base64.b32encode(device.bin_key).decode().rstrip("=")
    return " ".join(secret[i:i + 4] for i in range(0, len(secret), 4))


def qr_svg(device: TOTPDevice) -> str:
    """The otpauth:// URL as an inline SVG QR code: the secret never leaves this server."""
    image = qrcode.make(device.config_url, image_factory=qrcode.image.svg.SvgPathImage, box_size=10)
    return image.to_string(encoding="unicode")


def issue_backup_codes(user: Any) -> list[str]:
    """New single-use backup codes (replacing any earlier ones), shown once at enrolment."""
    StaticDevice.objects.filter(user=user).delete()
    device = StaticDevice.objects.create(user=user, name=BACKUP_DEVICE_NAME, confirmed=True)
    codes = [StaticToken.random_token() for _ in range(BACKUP_CODES)]
    StaticToken.objects.bulk_create(StaticToken(device=device, token=code) for code in codes)
    return codes


def _device_for(user: Any, device: TOTPDevice, code: str, *, backup_allowed: bool) -> Device:
    """The authenticator for a 6-digit code; the backup codes for anything else (when allowed)."""
    if backup_allowed and not (code.isdigit() and len(code) == device.digits):
        return StaticDevice.objects.filter(user=user, confirmed=True).first() or device
    return device


def verify_code(request: HttpRequest, device: TOTPDevice, code: str, *, backup_allowed: bool = True) -> None:
    """Accept `code` (from `device`, or a backup code) for the signed-in user and mark the session verified.

    Raises CodeRefused (wrong, reused or too-fast code) or LockedOut (the failed-login limit is
    reached: the user is signed out, and the password step refuses them until the cool-off ends).
    """
    user = request.user
    code = "".join(code.split()).lower()
    device = _device_for(user, device, code, backup_allowed=backup_allowed)
    credentials = {settings.AXES_USERNAME_FORM_FIELD: user.get_username()}
    if AxesProxyHandler.is_locked(request, credentials):
        logout(request)
        raise LockedOut
    allowed, data = device.verify_is_allowed()
    if not allowed:
        wait = ""
        if data and data.get("locked_until"):
            seconds = max(1, int((data["locked_until"] - timezone.now()).total_seconds()) + 1)
            wait = ngettext(" Wait %(n)d second, then", " Wait %(n)d seconds, then", seconds) % {"n": seconds}
        raise CodeRefused(f"Too many wrong codes in a row.{wait or ' Wait a moment, then'} enter the current code.")
    if not device.verify_token(code):
        user_login_failed.send(sender=__name__, credentials=credentials, request=request)
        if getattr(request, "axes_locked_out", False) or AxesProxyHandler.is_locked(request, credentials):
            logout(request)
            raise LockedOut
        raise CodeRefused("That code is not right. Enter the 6-digit code your authenticator app shows now"
                          + (", or an unused backup code." if backup_allowed else "."))
    if not device.confirmed:
        device.confirmed = True
        device.save(update_fields=["confirmed"])
    request.session.cycle_key()
    otp_login(request, device)
    mark_active(request.session)
    # A complete sign-in clears this person's failed attempts (passwords and codes).
    AxesProxyHandler.reset_attempts(username=user.get_username(), ip_address=get_client_ip_address(request))

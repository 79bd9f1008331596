"""Celery tasks of institutions: thin and idempotent; the work is in the modules they call."""
from __future__ import annotations

from celery import shared_task

from . import keys


@shared_task(name="institutions.advance_key_rotation", ignore_result=True)
def advance_key_rotation() -> list[str]:
    """Beat: move the tool key rotation on (next → signing, retiring → retired) when due."""
    return keys.advance_rotation()

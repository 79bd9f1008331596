"""`{% local_time value %}`: a time in the staff member's zone, to the second, UTC on hover (institutions.local_time)."""
from __future__ import annotations

from django import template

from institutions.local_time import local_time as _local_time

register = template.Library()


@register.simple_tag
def local_time(value):
    return _local_time(value)

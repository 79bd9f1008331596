"""One way to show a grade, everywhere support reads one: the LMS's points and the percentage, "8 / 10 (80 %)".

We keep a grade as a fraction of the maximum (the LMS applies its own points, PRODUCT.md), so the
points shown are the fraction times the LMS line item's maximum; without a line item (none bound
yet) only the percentage can be said.
"""
from __future__ import annotations

from decimal import Decimal


def _number(value: float, places: int) -> str:
    """`value` rounded to `places` decimals, without trailing zeros: 8, 7.5, 6.67."""
    text = f"{value:.{places}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def percent_text(fraction: Decimal | float) -> str:
    """0.8 → "80 %"; 0.875 → "87.5 %"."""
    return f"{_number(float(fraction) * 100, 1)} %"


def score_text(fraction: Decimal | float | None, maximum: float | None = None) -> str:
    """A grade as support reads it: "8 / 10 (80 %)" with the LMS's maximum, "80 %" without one, "—" for none."""
    if fraction is None:
        return "—"
    if not maximum:
        return percent_text(fraction)
    return f"{_number(float(fraction) * maximum, 2)} / {_number(maximum, 2)} ({percent_text(fraction)})"


def points_text(given: float | None, maximum: float | None) -> str:
    """What an exchange sent, in the LMS's own points (scoreGiven / scoreMaximum): "8 / 10 (80 %)"."""
    if given is None:
        return "—"
    if not maximum:
        return _number(given, 2)
    return score_text(given / maximum, maximum)

"""Captions for video activities: WebVTT text kept on the activity, served to the video's <track>.

A video without captions is flagged to the catalog's editors (courseware/admin.py). The checks here
are what a browser needs to show the captions at all; they run when an editor saves the activity.
"""
from __future__ import annotations

import re

from .models import Activity, ActivityKind

# A lecture's captions are a few tens of kilobytes; anything far bigger is not captions.
MAX_CAPTIONS_CHARS = 200_000
# BCP 47 tags as <track srclang> takes them: "en", "fr-CA", "zh-Hant-TW".
LANGUAGE_TAG = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
_CUE_TIMING = re.compile(r"^(\d{2,}:)?\d{2}:\d{2}\.\d{3} --> (\d{2,}:)?\d{2}:\d{2}\.\d{3}")
_TRANSCRIPT_MARK = re.compile(r"^\[(\d{1,2}):(\d{2})\]\s*(.*)$")


class CaptionsRefused(ValueError):
    """Captions a browser would not show; the message says what to fix."""


def needs_captions(activity: Activity) -> bool:
    """A video with no captions: flagged to the catalog's editors."""
    return activity.kind == ActivityKind.VIDEO and not activity.captions_vtt.strip()


def check_captions(text: str) -> str:
    """The WebVTT text, normalised (line ends); raises CaptionsRefused when a browser would not show it."""
    text = (text or "").replace("\r\n", "\n").replace("\r", "\n").strip()
    if not text:
        return ""
    if len(text) > MAX_CAPTIONS_CHARS:
        raise CaptionsRefused(f"Captions are limited to {MAX_CAPTIONS_CHARS:,} characters; these have {len(text):,}.")
    first = text.split("\n", 1)[0].lstrip("\ufeff")
    if not (first == "WEBVTT" or first.startswith(("WEBVTT ", "WEBVTT\t"))):
        raise CaptionsRefused("WebVTT captions start with a line “WEBVTT” (paste the whole .vtt file).")
    if not any(_CUE_TIMING.match(line.strip()) for line in text.split("\n")):
        raise CaptionsRefused("No cue found: each caption needs a timing line such as “00:00:01.000 --> 00:00:04.000”.")
    return text + "\n"


def check_language(tag: str) -> str:
    tag = (tag or "").strip()
    if not LANGUAGE_TAG.match(tag):
        raise CaptionsRefused(f"“{tag}” is not a language tag: use one such as “en”, “fr” or “pt-BR”.")
    return tag


def _timestamp(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}.000"


def captions_from_transcript(transcript: str, *, last_cue_seconds: int = 30) -> str:
    """WebVTT from a transcript whose paragraphs start with "[mm:ss]" (the demo's videos); "" if none do.

    Each marked paragraph is one cue, until the next mark (the last one lasts `last_cue_seconds`).
    """
    marks: list[tuple[int, str]] = []
    for paragraph in transcript.split("\n"):
        found = _TRANSCRIPT_MARK.match(paragraph.strip())
        if found and found.group(3):
            marks.append((int(found.group(1)) * 60 + int(found.group(2)), found.group(3)))
    if not marks:
        return ""
    cues = ["WEBVTT", ""]
    for index, (start, text) in enumerate(marks, start=1):
        end = marks[index][0] if index < len(marks) else start + last_cue_seconds
        cues += [str(index), f"{_timestamp(start)} --> {_timestamp(max(end, start + 1))}", text, ""]
    return "\n".join(cues)

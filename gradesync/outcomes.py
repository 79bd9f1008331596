"""How LMS answers to a score POST are classified: one table per LMS family, data not ifs."""
from __future__ import annotations

import enum
from dataclasses import dataclass


class Outcome(enum.StrEnum):
    SENT = "sent"
    RETRY = "retry"  # timeout, connection error, 5xx, throttled: back off and try again
    STALE = "stale"  # the LMS holds a later timestamp: resend once with a fresh one
    REFRESH = "refresh"  # token rejected: fetch a new one once, then retry once
    REFUSED = "refused"  # terminal: the LMS will not take this grade; support sees why


@dataclass(frozen=True)
class Rule:
    statuses: tuple[int, ...] | range
    outcome: Outcome
    contains: str = ""  # a phrase of the body or the reason phrase that must appear (case-insensitive)
    advice: str = ""  # the next step, in plain words, for support


ANY_4XX = range(400, 500)
ANY_5XX = range(500, 600)

COMMON: list[Rule] = [
    Rule(range(200, 300), Outcome.SENT),
    Rule((408, 425, 429), Outcome.RETRY, advice="The LMS asked us to slow down; it is retried automatically."),
    Rule(ANY_5XX, Outcome.RETRY, advice="The LMS had an error; it is retried automatically."),
    Rule((401,), Outcome.REFRESH),
    Rule(ANY_4XX, Outcome.REFUSED, advice="The LMS refused the grade; read its message, fix the cause in the LMS, then resync."),
]

TABLES: dict[str, list[Rule]] = {
    "canvas": [
        Rule((403,), Outcome.RETRY, contains="rate limit exceeded", advice="Canvas throttled us; retried automatically."),
        Rule((400,), Outcome.STALE, contains="before last updated timestamp"),
        Rule(
            (422,),
            Outcome.REFUSED,
            contains="maximum number of allowed attempts",
            advice="Canvas refused: Allowed Attempts reached. Raise Allowed Attempts in Canvas, then resync this grade.",
        ),
        Rule(
            (422,),
            Outcome.REFUSED,
            contains="not a student",
            advice="Canvas refused: the user is not a student of this course in Canvas. Check the enrolment, then resync.",
        ),
        Rule(
            (401,),
            Outcome.REFUSED,
            contains="not linked to a tool associated with this context",
            advice="Canvas refused: the course left this deployment's scope (moved to another sub-account). "
            "Deploy the tool where the course now is, launch once, then resync.",
        ),
        Rule(
            (404, 422),
            Outcome.REFUSED,
            contains="",
            advice="Canvas refused the grade (the course may be concluded or the assignment deleted). Check it in Canvas, then resync.",
        ),
    ],
    # Moodle gives its reason only in the HTTP status line (the body is `[]`): the rules read it there.
    "moodle": [
        Rule(
            (409,),
            Outcome.STALE,
            advice="Moodle holds a later grade for this learner (a teacher's edit in Moodle, or our own send in the "
            "same second) and refused ours even when resent a second later. Check the grade in Moodle, then resync.",
        ),
        Rule(
            (400,),
            Outcome.REFUSED,
            contains="incorrect score received",
            advice="Moodle refused: the user cannot be graded in this activity — Moodle says \"Incorrect score "
            "received\" when the learner is not enrolled in the course as a student (or the score was malformed). "
            "Check the learner's enrolment in Moodle, then resync.",
        ),
        Rule(
            (404,),
            Outcome.REFUSED,
            contains="grade item",
            advice="Moodle refused: this activity's grade item no longer exists in Moodle (deleted, or the course "
            "was reset). Check the activity's grade settings in Moodle, then resync.",
        ),
    ],
    "blackboard": [
        Rule((400,), Outcome.REFUSED, contains="user could not be found",
             advice="Blackboard refused: the user is not in this course. Check the enrolment, then resync."),
    ],
    "d2l": [
        Rule((403, 404, 422), Outcome.REFUSED,
             advice="Brightspace refused the grade; check the grade item and the user's enrolment, then resync."),
    ],
}


@dataclass(frozen=True)
class Classification:
    outcome: Outcome
    advice: str


def classify(lms_family: str, status_code: int, body: str, reason: str = "") -> Classification:
    """`reason`: the HTTP status line's phrase, where some LMSes (Moodle) put their only words."""
    text = f"{reason or ''} {body or ''}".lower()
    for rule in [*TABLES.get(lms_family, []), *COMMON]:
        if status_code in rule.statuses and (not rule.contains or rule.contains in text):
            return Classification(rule.outcome, rule.advice)
    return Classification(Outcome.REFUSED, "Unexpected answer from the LMS.")

"""The demo catalog: every kind of activity, real questions, loaded once however often it runs."""
from __future__ import annotations

from io import StringIO

import pytest

from courseware.demo import load_demo
from courseware.models import Activity, ActivityKind, Question
from courseware.services import is_correct

pytestmark = pytest.mark.django_db


def test_the_demo_catalog_has_every_kind_and_loads_once():
    out = StringIO()
    load_demo(base_url="http://127.0.0.1:8000", stdout=out)
    first = (Activity.objects.count(), Question.objects.count())
    load_demo(base_url="http://127.0.0.1:8000", stdout=out)

    assert (Activity.objects.count(), Question.objects.count()) == first
    assert "(0 new)" in out.getvalue().splitlines()[-1]
    assert set(Activity.objects.values_list("kind", flat=True)) == set(ActivityKind.values)
    assert Activity.objects.filter(kind=ActivityKind.SECTION_HEADER).count() in (3, 4)
    for item in Activity.objects.exclude(kind=ActivityKind.SECTION_HEADER):
        assert item.section is not None and item.section.position < item.position, item.title
    for reading in Activity.objects.filter(kind__in=[ActivityKind.READING, ActivityKind.VIDEO]):
        assert reading.body.count("\n\n") >= 3, reading.title


def test_every_demo_question_can_be_answered_right():
    load_demo(base_url="http://127.0.0.1:8000", stdout=StringIO())

    for question in Question.objects.select_related("activity"):
        if question.choices:
            assert 0 <= question.answer < len(question.choices), question.prompt
            right = str(question.answer)
        else:
            assert question.activity.kind == ActivityKind.LAB and question.answer, question.prompt
            right = question.answer[0]
        assert is_correct(choices=question.choices, answer=question.answer, given=right)
    for quiz in Activity.objects.filter(kind__in=[ActivityKind.CUSTOM_QUIZ, ActivityKind.COMPETENCY_ASSESSMENT]):
        assert 4 <= quiz.questions.count() <= 6, quiz.title
    lab = Activity.objects.get(kind=ActivityKind.LAB)
    ipconfig = lab.questions.get(prompt="Which command shows the IP configuration on Windows?")
    assert ipconfig.answer == ["ipconfig", "ipconfig /all"]

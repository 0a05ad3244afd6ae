"""The question table decides what an answer must hold in every phase: which fields are asked, which are required,
the bounds (the study's settings where they are settings) and what each kind of question accepts."""

from dataclasses import replace

import pytest

from studycolumns import questions
from studyplatform import services
from studyplatform.models import Study

PHASES = tuple(questions.PHASE_QUESTIONS)


def study(**settings):
    """An unsaved study with its default settings: validation reads the settings, never the database."""
    return Study(title="Questions", slug="questions", **settings)


def typical_value(question, shown_in):
    low, high = question.bounds_in(shown_in) or (None, None)
    return {
        questions.CHOICE: lambda: question.options_in(shown_in)[-1][0],
        questions.SCALE: lambda: high,
        questions.SLIDER: lambda: low,
        questions.CHECKLIST: lambda: [1, len(question.options_in(shown_in))],
        questions.ELAPSED: lambda: 250,
    }.get(question.kind, lambda: question.kind_of.example(question, shown_in))()


def full_answer(phase, shown_in):
    """An answer to every question of the phase, built from the table alone."""
    answer = {}
    for question in questions.asked_in(phase):
        answer[question.name] = typical_value(question, shown_in)
        if question.moved_field:
            answer[question.moved_field] = True
    return answer


def refusal(shown_in, phase, answer):
    with pytest.raises(services.AnswerInvalid) as caught:
        services.validate_answer(shown_in, {"phase": phase}, answer)
    return caught.value.errors


def asked_pairs(kinds=None):
    return [
        pytest.param(phase, question, id=f"{phase}-{question.name}")
        for phase in PHASES
        for question in questions.asked_in(phase)
        if kinds is None or question.kind in kinds
    ]


@pytest.mark.parametrize("phase", PHASES)
def test_a_full_answer_is_stored_as_the_table_says(phase):
    shown_in = study()
    answer = full_answer(phase, shown_in)
    clean = services.validate_answer(shown_in, {"phase": phase}, answer)
    # The questions the phase does not ask are left to their columns' defaults.
    assert list(clean) == [question.name for question in questions.asked_in(phase)]
    for name, value in clean.items():
        assert value == (sorted(answer[name]) if isinstance(answer[name], list) else answer[name]), name


@pytest.mark.parametrize("phase, question", asked_pairs())
def test_leaving_out_a_question_is_refused_exactly_when_it_is_required(phase, question):
    shown_in = study()
    answer = full_answer(phase, shown_in)
    del answer[question.name]
    if question.required:
        assert question.name in refusal(shown_in, phase, answer)
    else:
        assert question.name in services.validate_answer(shown_in, {"phase": phase}, answer)


@pytest.mark.parametrize("phase, question", asked_pairs({questions.SCALE, questions.SLIDER, questions.ELAPSED}))
def test_numbers_are_held_to_the_bounds_of_the_study(phase, question):
    # Narrow every study-set bound so that the default bounds would accept what these refuse.
    shown_in = study(realness_min=10, realness_max=20, confidence_min=2, confidence_max=4)
    low, high = question.bounds_in(shown_in)
    for accepted in (low, high, str(low)):
        answer = {**full_answer(phase, shown_in), question.name: accepted}
        assert services.validate_answer(shown_in, {"phase": phase}, answer)[question.name] == int(accepted)
    for refused in (low - 1, high + 1, float(low), True, f"+{low}", "٣"):
        answer = {**full_answer(phase, shown_in), question.name: refused}
        assert question.name in refusal(shown_in, phase, answer), refused


@pytest.mark.parametrize("phase, question", asked_pairs({questions.CHOICE}))
def test_a_choice_takes_only_the_options_of_the_study(phase, question):
    shown_in = study()
    for value, _ in question.options_in(shown_in):
        answer = {**full_answer(phase, shown_in), question.name: value}
        assert services.validate_answer(shown_in, {"phase": phase}, answer)[question.name] == value
    for refused in ("cardiomegaly", 1, ["healthy"]):
        assert question.name in refusal(shown_in, phase, {**full_answer(phase, shown_in), question.name: refused})


@pytest.mark.parametrize("phase, question", asked_pairs({questions.CHECKLIST}))
def test_a_checklist_takes_a_list_of_distinct_option_numbers(phase, question):
    shown_in = study(reasons=["too smooth", "too clean", "odd shading"])
    assert services.validate_answer(
        shown_in, {"phase": phase}, {**full_answer(phase, shown_in), question.name: ["3", 1]}
    )[question.name] == [1, 3]
    for refused in ([4], [0], [2, 2], "1", 1, [1.0], ["one"]):
        assert question.name in refusal(shown_in, phase, {**full_answer(phase, shown_in), question.name: refused})


@pytest.mark.parametrize("phase, question", asked_pairs({questions.SLIDER}))
def test_a_slider_must_have_been_moved(phase, question):
    shown_in = study()
    for unmoved in (False, None, "", 1, "yes"):
        answer = {**full_answer(phase, shown_in), question.moved_field: unmoved}
        assert question.moved_field in refusal(shown_in, phase, answer), unmoved
    for moved in (True, "1", "true", "on"):
        answer = {**full_answer(phase, shown_in), question.moved_field: moved}
        assert services.validate_answer(shown_in, {"phase": phase}, answer)


@pytest.mark.parametrize("phase", PHASES)
def test_the_questions_of_other_phases_are_refused(phase):
    shown_in = study()
    asked = {question.name for question in questions.asked_in(phase)}
    others = [question for question in questions.QUESTIONS if question.name not in asked]
    for question in others:
        for name in question.fields:
            sent = {**full_answer(phase, shown_in), name: True if name == question.moved_field else 1}
            assert "not asked in this part of the study" in refusal(shown_in, phase, sent)[name]


def test_a_field_no_question_sends_is_refused():
    shown_in = study()
    assert "colour" not in questions.ANSWER_FIELDS
    assert "unknown" in refusal(shown_in, "block1", {**full_answer("block1", shown_in), "colour": "blue"})


def test_bounds_and_options_that_are_study_settings_are_read_from_the_study():
    shown_in = study(realness_min=10, realness_max=20, confidence_min=2, confidence_max=4, reasons=["a", "b"])
    assert questions.REALNESS.bounds_in(shown_in) == (10, 20)
    assert questions.CONFIDENCE.bounds_in(shown_in) == (2, 4)
    assert questions.REASONS.options_in(shown_in) == [(1, "a"), (2, "b")]
    assert questions.DIAGNOSIS.options_in(shown_in) == shown_in.diagnosis_choices
    named = [bound for question in questions.QUESTIONS for bound in question.bounds if isinstance(bound, str)]
    assert named and all(Study._meta.get_field(name) for name in named)


@pytest.mark.parametrize(
    "question", [q for q in questions.QUESTIONS if q.kind != questions.SLIDER], ids=lambda q: q.name
)
def test_required_is_honoured_by_every_kind(question):
    shown_in = study()
    for required in (True, False):
        errors = {}
        clean = replace(question, required=required).clean({}, shown_in, errors)
        assert (question.name in errors) is required, (question.name, required)
        assert clean in (None, [])

"""The questions of each phase of a session, declared once as data.

Everything that asks, checks, stores or exports an answer reads this table: validation
(`studyplatform.services.validate_answer`), the trial form (`studyplatform.views` parses it and
`templates/study/questions/<kind>.html` renders each question), the participant API's answer schema
(`studyplatform.api.AnswerIn`), storage (`studyplatform.models.Response`), the answers export and its column contract
(`studycolumns.ANSWER_COLUMNS`), and the analysis that reads that contract. A new question of an existing kind is
one `Question` entry in `QUESTIONS` and `PHASE_QUESTIONS`; a new kind is one `Kind` entry in `KINDS` (how its answer
is checked, its JSON type and an example answer) plus its template snippet. Its answer is stored by name in
`Response.other_answers` and exported in its own column(s) after the columns of the questions the platform was
built with, which keep their typed `Response` columns (`own_column`).

No Django here (the package sits below the study app and the analysis): a question names the Study attributes
that hold its bounds and options, so the same entry serves every study's settings.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass, replace

# The kinds of question a trial can ask.
CHOICE = "choice"  # one of the study's options, as radio buttons (stored as the option's value)
SCALE = "scale"  # a whole number within bounds, one radio button per number
SLIDER = "slider"  # a whole number within bounds on a slider that must be moved from its random start
CHECKLIST = "checklist"  # any of the study's numbered options (stored as the sorted 1-based numbers)
ELAPSED = "elapsed"  # milliseconds from showing the trial to the answer, measured by the page

# Numbers arrive as JSON integers or, from the form, as ASCII digits; "٣", "５０" or "²" are not numbers here.
ASCII_NUMBER = re.compile(r"[0-9]{1,9}")
ASCII_OPTION_NUMBER = re.compile(r"[0-9]{1,3}")
MAX_RT_MS = 24 * 3600 * 1000
# How a form says "the slider was moved" (a JSON client sends true).
MOVED_TEXTS = ("true", "1", "on")


# The JSON type of each kind's answer, as a JSON client sends it and as it is stored: the API schema and the form
# parser read it (a form sends a list as repeated fields).
STRING = "string"
INTEGER = "integer"
INTEGER_LIST = "integer list"


@dataclass(frozen=True)
class Question:
    """One question: `name` is the answer field (form, API), the key its answer is stored under and its export
    column."""

    name: str
    kind: str
    label: str
    required: bool = True
    # SCALE, SLIDER, ELAPSED: (lowest, highest), each a number or the name of the Study attribute that holds it.
    bounds: tuple = ()
    # CHOICE: the Study attribute holding [(value, label)]; CHECKLIST: the one holding the list of option texts.
    options: str = ""
    # SCALE, SLIDER: what the lowest and the highest number mean, shown at the ends of the scale.
    anchors: tuple = ()
    # What the page asks for while a required question is unanswered ("Please choose a diagnosis.").
    missing: str = ""
    # SLIDER: the field that confirms the participant moved it, and the trial's key holding its random start (drawn
    # when the participant's plan is built, stored with the answer and exported beside it).
    moved_field: str = ""
    start_field: str = ""
    # Export columns that the export computes from the trial rather than from the answer (the diagnosis's
    # `correct`: 1 where it names the condition of the image shown).
    derived: tuple = ()
    # The answer (and a slider's start) has a typed `Response` column of the same name: the questions the platform
    # was built with, which the admin lists and queries. Any other question's answer is stored by name in
    # `Response.other_answers`, so adding a question needs no new column and no migration.
    own_column: bool = False

    @property
    def kind_of(self):
        return KINDS[self.kind]

    @property
    def fields(self):
        """The names this question sends in an answer."""
        return (self.name, self.moved_field) if self.moved_field else (self.name,)

    @property
    def template(self):
        return f"study/questions/{self.kind}.html"

    @property
    def empty(self):
        """The stored answer where a phase does not ask the question: no numbers for a list, else nothing."""
        return [] if self.kind_of.value_type == INTEGER_LIST else None

    @property
    def count_column(self):
        """The export column counting a list answer's numbers (`n_<name>`); "" for other answers."""
        return f"n_{self.name}" if self.kind_of.value_type == INTEGER_LIST else ""

    @property
    def export_columns(self):
        """The answers-export columns this question fills, in order: its answer, the count of a list answer's
        numbers, a slider's start, and the derived columns."""
        optional = (self.count_column, self.start_field)
        return (self.name, *(column for column in optional if column), *self.derived)

    def bounds_in(self, study):
        return tuple(getattr(study, bound) if isinstance(bound, str) else bound for bound in self.bounds)

    def options_in(self, study):
        """[(value, label)] the participant chooses from in `study`."""
        if self.kind == CHOICE:
            return list(getattr(study, self.options))
        if self.kind == CHECKLIST:
            return list(enumerate(getattr(study, self.options), start=1))
        if self.kind == SCALE:
            low, high = self.bounds_in(study)
            return [(number, number) for number in range(low, high + 1)]
        return []

    def clean(self, data, study, errors):
        """The stored value of this question's answer in `data`; a refusal is a message in `errors`."""
        return self.kind_of.clean(self, data, study, errors)

    def example_answer(self, study):
        """A valid answer to this question in `study`, as a JSON client sends it ({field: value}): what simulated
        readers, load bots and tests send for a question they have no behaviour of their own for."""
        answer = {self.name: self.kind_of.example(self, study)}
        if self.moved_field:
            answer[self.moved_field] = True
        return answer

    def refuse_fields(self, data, phase, errors):
        """A phase that does not ask this question refuses any value sent for it."""
        for name in self.fields:
            if data.get(name) not in (None, "", []):
                errors[name] = f"{name} is not asked in this part of the study ({phase})"

    def export_cells(self, value, asked, start=None):
        """{column: cell} of a stored answer (and a slider's start) but the derived columns; empty cells where the
        phase did not ask the question."""
        if self.count_column:
            value = value or []
            cells = {
                self.name: ";".join(str(number) for number in value),
                self.count_column: len(value) if asked else None,
            }
        else:
            cells = {self.name: value}
        if self.start_field:
            cells[self.start_field] = start
        return cells


@dataclass(frozen=True)
class Kind:
    """What a kind of question needs besides its template snippet: how an answer is checked (`clean(question, data,
    study, errors)` returns the value to store and puts refusals into `errors`), the JSON type of that value, and
    `example(question, study)`, a valid answer."""

    name: str
    clean: Callable
    value_type: str
    example: Callable


def _whole_number(value, name, low, high, errors, required=True):
    """A whole number: a JSON integer or a string of ASCII digits (what a form sends); never a bool, a float,
    other scripts' digits or a string with signs or spaces."""
    if value is None or value == "":
        if required:
            errors[name] = f"{name} is required (a whole number from {low} to {high})"
        return None
    if isinstance(value, str) and ASCII_NUMBER.fullmatch(value):
        value = int(value)
    if type(value) is not int or not low <= value <= high:
        errors[name] = f"{name} must be a whole number from {low} to {high}"
        return None
    return value


def _clean_number(question, data, study, errors):
    low, high = question.bounds_in(study)
    return _whole_number(data.get(question.name), question.name, low, high, errors, question.required)


def _clean_slider(question, data, study, errors):
    value = _clean_number(question, data, study, errors)
    moved = data.get(question.moved_field)
    if moved is not True and not (isinstance(moved, str) and moved in MOVED_TEXTS):
        errors[question.moved_field] = f"move the {question.name} slider before continuing"
    return value


def _clean_choice(question, data, study, errors):
    value = data.get(question.name)
    if value in (None, "") and not question.required:
        return None
    values = [option for option, _ in question.options_in(study)]
    if value not in values:
        errors[question.name] = f"{question.name} must be one of {', '.join(values)}"
        return None
    return value


def _clean_checklist(question, data, study, errors):
    """A list of option numbers (JSON integers, or ASCII digit strings from the form's checkboxes); absent or null is
    none ticked. A single number that is not in a list is refused."""
    name, value, count = question.name, data.get(question.name), len(getattr(study, question.options))
    if value is None:
        value = []
    if not isinstance(value, list):
        errors[name] = f"{name} must be a list of numbers from 1 to {count}"
        return []
    numbers = []
    for item in value:
        number = None
        if type(item) is int:
            number = item
        elif isinstance(item, str) and ASCII_OPTION_NUMBER.fullmatch(item):
            number = int(item)
        if number is None or not 1 <= number <= count:
            errors[name] = f"{name} must be numbers from 1 to {count}"
            return []
        numbers.append(number)
    if len(set(numbers)) != len(numbers):
        errors[name] = f"each {name.removesuffix('s')} can be ticked once"
        return []
    if question.required and not numbers:
        errors[name] = f"{name}: tick at least one"
    return sorted(numbers)


def _middle(question, study):
    low, high = question.bounds_in(study)
    return (low + high) // 2


KINDS = {
    kind.name: kind
    for kind in (
        Kind(CHOICE, _clean_choice, STRING, lambda question, study: question.options_in(study)[0][0]),
        Kind(SCALE, _clean_number, INTEGER, _middle),
        Kind(SLIDER, _clean_slider, INTEGER, _middle),
        Kind(CHECKLIST, _clean_checklist, INTEGER_LIST, lambda question, study: [1]),
        Kind(ELAPSED, _clean_number, INTEGER, lambda question, study: 1500),
    )
}

DIAGNOSIS = Question(
    "diagnosis",
    CHOICE,
    "Your diagnosis",
    options="diagnosis_choices",
    missing="choose a diagnosis",
    derived=("correct",),
    own_column=True,
)
RESPONSE_TIME = Question("rt_ms", ELAPSED, "Response time in milliseconds", bounds=(0, MAX_RT_MS), own_column=True)
REALNESS = Question(
    "realness",
    SLIDER,
    "How real does this image look?",
    bounds=("realness_min", "realness_max"),
    anchors=("definitely AI-generated", "definitely real"),
    missing="move the realness slider",
    moved_field="slider_moved",
    start_field="slider_start",
    own_column=True,
)
REASONS = Question(
    "reasons", CHECKLIST, "Reasons the image may be synthetic", required=False, options="reasons", own_column=True
)
CONFIDENCE = Question(
    "confidence",
    SCALE,
    "How confident are you in this diagnosis?",
    bounds=("confidence_min", "confidence_max"),
    anchors=("not confident at all", "very confident"),
    missing="choose your confidence",
    own_column=True,
)

# Every question, in the order of its export columns (a new question goes at the end, so that the columns of
# existing exports keep their places).
QUESTIONS = (DIAGNOSIS, REALNESS, REASONS, CONFIDENCE, RESPONSE_TIME)
# Each phase's questions in the order the page shows them (the response time is a hidden field, measured).
PHASE_QUESTIONS = {
    "block1": (DIAGNOSIS, RESPONSE_TIME, REALNESS, REASONS),
    "pre": (DIAGNOSIS, RESPONSE_TIME, CONFIDENCE),
    "post": (replace(DIAGNOSIS, label="Your final diagnosis for the patient's X-ray"), RESPONSE_TIME, CONFIDENCE),
    "attention": (DIAGNOSIS, RESPONSE_TIME),
}
# Every field an answer may carry, whatever its phase.
ANSWER_FIELDS = frozenset(name for question in QUESTIONS for name in question.fields)


def asked_in(phase):
    return PHASE_QUESTIONS[phase]


def phases_asking(name):
    return tuple(phase for phase, asked in PHASE_QUESTIONS.items() if any(q.name == name for q in asked))


def clean_answer(study, phase, data, errors):
    """{question name: stored value} of the questions of `phase`, parsed in the order the page shows them; any other
    question's field sent is refused. Problems go into `errors` by field. The questions the phase does not ask are
    left out: their columns keep the stored default (empty)."""
    asked = asked_in(phase)
    clean = {question.name: question.clean(data, study, errors) for question in asked}
    for question in QUESTIONS:
        if question.name not in clean:
            question.refuse_fields(data, phase, errors)
    return clean


def with_required_examples(answer, phase, study):
    """`answer` plus the example answer to each required question of `phase` that it leaves out: how a client with
    behaviour for some questions only (simulated readers, test helpers) answers a question added to the table after
    it was written."""
    for question in asked_in(phase):
        if question.required and not set(question.fields) & set(answer):
            answer = {**answer, **question.example_answer(study)}
    return answer


def slider_ranges(study):
    """{phase: ((start field, (lowest, highest)), ...)}: the random start that a participant's plan draws for each
    slider of each phase, within the slider's bounds in `study`."""
    return {
        phase: tuple((q.start_field, q.bounds_in(study)) for q in asked if q.start_field)
        for phase, asked in PHASE_QUESTIONS.items()
    }

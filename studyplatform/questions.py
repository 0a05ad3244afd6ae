"""The questions of each phase of a session, declared once as data.

Validation (`services.validate_answer`), the trial form (`views` parses it and `templates/study/questions/<kind>.html`
renders each question), the participant API's answer schema (`api.AnswerIn`) and the answers export all read this
table. A question of an existing kind is one entry here, plus storage for its answer (a `Response` column) and its
export column (`studycolumns.ANSWER_COLUMNS`); a new kind also needs its parser below and its template snippet.

No Django here: a question names the Study attributes that hold its bounds and options, so the same entry serves
every study's settings.
"""

import re
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


@dataclass(frozen=True)
class Question:
    """One question: `name` is the answer field (form, API) and the Response column its answer is stored in."""

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
    # SLIDER: the field that confirms the participant moved it, and the trial's key holding its random start.
    moved_field: str = ""
    start_field: str = ""

    @property
    def fields(self):
        """The names this question sends in an answer."""
        return (self.name, self.moved_field) if self.moved_field else (self.name,)

    @property
    def template(self):
        return f"study/questions/{self.kind}.html"

    @property
    def export_columns(self):
        """The answers-export columns this question fills: a checklist also gives the count of ticked options."""
        return (self.name, f"n_{self.name}") if self.kind == CHECKLIST else (self.name,)

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
        return CLEANERS[self.kind](self, data, study, errors)

    def refuse_fields(self, data, phase, errors):
        """A phase that does not ask this question refuses any value sent for it."""
        for name in self.fields:
            if data.get(name) not in (None, "", []):
                errors[name] = f"{name} is not asked in this part of the study ({phase})"

    def export_cells(self, value, asked):
        """{column: cell} of a stored answer; empty cells where the phase did not ask the question."""
        if self.kind == CHECKLIST:
            numbers, count = self.export_columns
            return {numbers: ";".join(str(number) for number in value), count: len(value) if asked else None}
        return {self.name: value}


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


CLEANERS = {
    CHOICE: _clean_choice,
    SCALE: _clean_number,
    SLIDER: _clean_slider,
    CHECKLIST: _clean_checklist,
    ELAPSED: _clean_number,
}

DIAGNOSIS = Question("diagnosis", CHOICE, "Your diagnosis", options="diagnosis_choices", missing="choose a diagnosis")
RESPONSE_TIME = Question("rt_ms", ELAPSED, "Response time in milliseconds", bounds=(0, MAX_RT_MS))
REALNESS = Question(
    "realness",
    SLIDER,
    "How real does this image look?",
    bounds=("realness_min", "realness_max"),
    anchors=("definitely AI-generated", "definitely real"),
    missing="move the realness slider",
    moved_field="slider_moved",
    start_field="slider_start",
)
REASONS = Question("reasons", CHECKLIST, "Reasons the image may be synthetic", required=False, options="reasons")
CONFIDENCE = Question(
    "confidence",
    SCALE,
    "How confident are you in this diagnosis?",
    bounds=("confidence_min", "confidence_max"),
    anchors=("not confident at all", "very confident"),
    missing="choose your confidence",
)

# Every question, in the order of its stored answer and its export columns.
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

"""A new question is one entry in the question table, and a new kind of question one more entry plus its template
snippet: nothing else in the project changes, no migration, and the question is asked, checked, stored, returned by
the API, exported and read by the analysis, and the trial page's script treats the new kind right.

The test copies the project, adds to the copy's `studycolumns/questions.py` a required 1-5 "difficulty" scale to
Block 1 (an existing kind) and a required free-text "comment" to the final Block-2 decision (a new kind, `text`,
with its snippet `templates/study/questions/text.html`), checks that these two files are the only ones that differ,
and runs there the table-driven tests of the questions and `probe_added_questions.py`. Its browser part runs in the
same copy and answers the comment in headless Chromium: `static/study.js` has no rule for `text`, so its general
rule (answered once an input holds text) must hold the page until the comment is written."""

import filecmp
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.study.test_browser_session import CHROMEDRIVER, CHROMIUM

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]

# What a developer adds to the table, each at its place in studycolumns/questions.py: (anchor, text put before it).
TEXT_KIND = '''def _clean_text(question, data, study, errors):
    """Free text of at most 500 characters, white space at the ends removed; nothing where none is given."""
    value = data.get(question.name)
    if not isinstance(value, str | None) or len(value or "") > 500:
        errors[question.name] = f"{question.name} must be a text of at most 500 characters"
        return None
    if not (value or "").strip():
        if question.required:
            errors[question.name] = f"{question.name} is required"
        return None
    return value.strip()


'''
ADDITIONS = (
    ("def _middle(question, study):", TEXT_KIND),
    (
        "    )\n}\n",
        '        Kind("text", _clean_text, STRING, lambda question, study: "The left angle looks blunted."),\n',
    ),
    (
        "# Every question, in the order of its export columns",
        'DIFFICULTY = Question("difficulty", SCALE, "How hard was this image to judge?", bounds=(1, 5), '
        'anchors=("easy", "very hard"), missing="rate how hard the image was to judge")\n'
        'COMMENT = Question("comment", "text", "In a few words, what decided your final diagnosis?", '
        'missing="say in a few words what decided your final diagnosis")\n\n',
    ),
)
# Where the two questions are asked: (the table's line, the line with them added).
LISTINGS = (
    (
        "QUESTIONS = (DIAGNOSIS, REALNESS, REASONS, CONFIDENCE, RESPONSE_TIME)",
        "QUESTIONS = (DIAGNOSIS, REALNESS, REASONS, CONFIDENCE, RESPONSE_TIME, DIFFICULTY, COMMENT)",
    ),
    (
        '"block1": (DIAGNOSIS, RESPONSE_TIME, REALNESS, REASONS),',
        '"block1": (DIAGNOSIS, RESPONSE_TIME, REALNESS, REASONS, DIFFICULTY),',
    ),
    (
        'RESPONSE_TIME, CONFIDENCE),\n    "attention"',
        'RESPONSE_TIME, CONFIDENCE, COMMENT),\n    "attention"',
    ),
)
SNIPPET = (
    '<fieldset data-kind="text"{% if field.required %} data-missing="{{ field.missing }}"{% endif %}>\n'
    '  <legend><label for="{{ field.name }}">{{ field.label }}</label></legend>\n'
    '  <textarea id="{{ field.name }}" name="{{ field.name }}" rows="3" maxlength="500"'
    "{% if field.required %} required{% endif %}></textarea>\n"
    "</fieldset>\n"
)
TABLE = "studycolumns/questions.py"
SNIPPET_PATH = "templates/study/questions/text.html"


def project_files():
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [name for name in listed.split("\0") if name and (ROOT / name).is_file()]


def add_questions(table):
    for anchor, text in ADDITIONS:
        assert table.count(anchor) == 1, f"the table changed shape: {anchor!r} is not there once"
        table = table.replace(anchor, text + anchor)
    for line, added in LISTINGS:
        assert table.count(line) == 1, f"the table changed shape: {line!r} is not there once"
        table = table.replace(line, added)
    return table


@pytest.fixture(scope="module")
def copy(tmp_path_factory):
    """The project copied, with the two questions added to its table and the new kind's snippet: (its root, the
    project files that differ from the original)."""
    if not (ROOT / ".git").exists():
        pytest.skip("needs the project's git checkout to list its files")
    base = tmp_path_factory.mktemp("one-entry")
    copy = base / "project"
    files = project_files()
    for name in files:
        target = copy / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((ROOT / name).read_bytes())
    table = copy / TABLE
    table.write_text(add_questions(table.read_text()))
    (copy / SNIPPET_PATH).write_text(SNIPPET)
    changed = {name for name in files if not filecmp.cmp(ROOT / name, copy / name, shallow=False)}
    added = {name for name in (SNIPPET_PATH,) if not (ROOT / name).exists()}
    return copy, changed | added


def run_tests(copy, *args):
    """Pytest's report of `args` run inside the copy, on its own SQLite database; fails unless everything passed."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DATABASE_URL", "CELERY_", "CACHE_"))}
    env.update(VAR_DIR=str(copy.parent / "var"), PYTHONDONTWRITEBYTECODE="1")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    report = run.stdout[-6000:] + run.stderr[-3000:]
    print(report)
    assert run.returncode == 0, report
    assert " passed" in report and "skipped" not in report.rsplit("\n", 2)[-2], report
    return report


def test_a_new_question_and_a_new_kind_touch_only_the_table_and_the_snippet(copy):
    root, changed = copy
    assert changed == {TABLE, SNIPPET_PATH}
    tests = [
        "tests/study/probe_added_questions.py",
        "tests/study/test_study_questions_agree_everywhere.py",
        "tests/study/test_study_questions_drive_validation.py",
        "tests/study/test_block1_counterbalanced_design.py",
        "tests/study/test_export_columns.py",
    ]
    # The probe's browser part is the test below (marked `browser`, like every test that needs Chromium).
    run_tests(root, "-m", "not browser", *tests)


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists() or not CHROMEDRIVER.exists(), reason="needs /usr/bin/chromium")
def test_the_trial_page_holds_the_new_kind_until_it_is_answered(copy):
    root, changed = copy
    assert changed == {TABLE, SNIPPET_PATH}
    report = run_tests(root, "-m", "browser", "tests/study/probe_added_questions.py")
    assert "1 passed" in report, report

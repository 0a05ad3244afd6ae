"""Interim analysis of a study that is still running: participants in every status, some mid-session, are analysed
from the database and from the exported CSV files, and everyone who does not count is listed with the reason."""

import io
import json
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from studyplatform import export, services
from studyplatform.models import Participant
from tests.study.factories import run_whole_session, valid_answer

pytestmark = pytest.mark.django_db


def answer_some(participant, count):
    """Answer the next `count` trials of a session (reading the block instructions when they come)."""
    answered = 0
    while answered < count:
        participant.refresh_from_db()
        step = services.next_step(participant)
        if step["state"] == "instructions":
            services.begin_block(participant, step["block"])
            continue
        assert step["state"] == "trial", step
        services.submit_answer(participant, step["trial"]["id"], valid_answer(step["trial"]))
        answered += 1
    participant.refresh_from_db()
    return participant


@pytest.fixture
def live_study(open_study):
    """Three completed participants and one in each other status (Block 1 has 9 trials, Block 2 has 4)."""

    def start(name):
        return services.start_session(open_study, external_id=name)[0]

    people = {f"completed{i}": run_whole_session(start(f"completed{i}")) for i in range(3)}
    people["started"] = start("started")
    people["block1"] = answer_some(start("inblockone"), 4)
    people["block2"] = answer_some(start("inblocktwo"), 9 + 1)  # the first decision of a Block-2 case, not the final
    timed_out = answer_some(start("timedout"), 5)
    Participant.objects.filter(pk=timed_out.pk).update(last_seen_at=timezone.now() - timedelta(hours=3))
    services.expire_idle_sessions(open_study)
    people["timed_out"] = timed_out
    withdrawn = answer_some(start("withdrawn"), 3)
    people["withdrawn"] = services.withdraw(withdrawn)
    excluded = run_whole_session(start("excluded"))
    people["excluded"] = services.exclude_participant(excluded, "answered too fast")
    for participant in people.values():
        participant.refresh_from_db()
    statuses = {participant.status for participant in people.values()}
    assert statuses == set(Participant.Status.values)
    return open_study, people


def analyse(args, out):
    stdout = io.StringIO()
    call_command("run_analysis", *args, "--out", str(out), "--no-models", verbosity=0, stdout=stdout)
    return json.loads((out / "analysis.json").read_text()), stdout.getvalue()


def test_a_running_study_is_analysed_from_the_database_and_from_its_export(live_study, tmp_path):
    study, people = live_study
    from_db, summary = analyse([study.slug], tmp_path / "db")
    files = export.export_study(study, tmp_path / "export")
    from_csv, _ = analyse(
        ["--from-csv", str(files["answers"]), "--participants", str(files["participants"])], tmp_path / "csv"
    )
    assert from_db["settings"].pop("input") == f"study {study.slug}"
    assert from_csv["settings"].pop("input").startswith("CSV ")
    assert from_db == from_csv

    label = {name: participant.label for name, participant in people.items()}
    reasons = {entry["participant"]: (entry["status"], entry["reason"]) for entry in from_db["exclusions"]}
    assert reasons == {
        label["started"]: ("started", "did not complete (status started)"),
        label["block1"]: ("block1", "did not complete (status block1)"),
        label["block2"]: ("block2", "did not complete (status block2)"),
        label["timed_out"]: ("timed_out", "timed out: idle for more than 60 min"),
        label["withdrawn"]: ("withdrawn", "withdrew from the study"),
        label["excluded"]: ("excluded", "answered too fast"),
    }
    assert from_db["n_participants"] == 3
    assert from_db["block2"]["n_pairs"] == 3 * study.block2_cases
    assert f"excluded {label['block2']}: did not complete (status block2)" in summary


def test_incomplete_participants_count_on_request(live_study, tmp_path):
    """--include-incomplete adds the participants still in the study (and timed-out ones a researcher included
    again); a Block-2 case with only its first decision keeps it, with the final decision missing."""
    study, people = live_study
    services.include_participant(people["timed_out"])
    document, _ = analyse([study.slug, "--include-incomplete"], tmp_path / "all")
    left_out = {entry["participant"] for entry in document["exclusions"]}
    assert left_out == {people["withdrawn"].label, people["excluded"].label}
    assert document["n_participants"] == 3 + 3  # block1, block2 and timed_out; "started" has no answers yet
    assert document["block2"]["n_pairs"] == 3 * study.block2_cases + 1
    assert document["block2"]["first_accuracy"]["n"] == 3 * study.block2_cases + 1
    assert document["block2"]["final_accuracy"]["n"] == 3 * study.block2_cases


def test_without_a_participants_file_completeness_is_read_from_the_answers(live_study, tmp_path):
    study, people = live_study
    files = export.export_study(study, tmp_path / "export")
    document, _ = analyse(["--from-csv", str(files["answers"])], tmp_path / "answers-only")
    reasons = {entry["participant"]: entry["reason"] for entry in document["exclusions"]}
    assert reasons[people["block1"].label] == "incomplete: 4 of 9 Block-1 and 0 of 4 Block-2 answers"
    assert reasons[people["block2"].label] == "incomplete: 9 of 9 Block-1 and 1 of 4 Block-2 answers"
    # The researcher's exclusion is not in the answers file: without the participants file it counts.
    assert people["excluded"].label not in reasons
    assert document["n_participants"] == 4


def test_the_analysis_accepts_exactly_the_statuses_the_platform_exports():
    from analysis.frames import STATUSES

    assert set(STATUSES) == set(Participant.Status.values)

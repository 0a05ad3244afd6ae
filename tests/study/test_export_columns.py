"""The tidy answers CSV and the participants CSV: exact columns, values as the analysis expects, escaping, ids."""

import csv
import io

import pytest
from django.core.management import call_command

from studycolumns import questions
from studyplatform import export, services
from studyplatform.models import Stimulus
from tests.study.factories import run_whole_session, valid_answer

pytestmark = pytest.mark.django_db


def read(text):
    return list(csv.DictReader(io.StringIO(text)))


def answers_csv(study, raw_ids=False):
    buffer = io.StringIO()
    export.write_answers_csv(study, buffer, raw_ids=raw_ids)
    return buffer.getvalue()


def always(diagnosis):
    return lambda trial: valid_answer(trial, diagnosis=diagnosis, realness=55, confidence=5, reasons=(2, 6))


def test_answers_csv_has_exactly_the_contract_columns_and_values(participant, open_study):
    run_whole_session(participant, answer=always("effusion"))
    text = answers_csv(open_study)
    # The platform's columns are a published contract: they keep their names and places. A question added to the
    # table later puts its columns between rt_ms and answered_at.
    built_in = (
        "participant,external_id,block,trial_index,case,image_source,true_condition,phase,cf_model,diagnosis,"
        "correct,realness,slider_start,reasons,n_reasons,confidence,rt_ms,answered_at,block1_design,simulated"
    ).split(",")
    added = [
        column for question in questions.QUESTIONS if not question.own_column for column in question.export_columns
    ]
    assert text.splitlines()[0].split(",") == built_in[:17] + added + built_in[17:]
    rows = read(text)
    assert len(rows) == 9 + 2 + 2
    block1 = [r for r in rows if r["block"] == "1"]
    block2 = [r for r in rows if r["block"] == "2"]
    assert {r["phase"] for r in block1} == {"block1"} and {r["cf_model"] for r in block1} == {""}
    assert sorted(int(r["trial_index"]) for r in block1) == list(range(1, 10))
    assert {r["image_source"] for r in block1} == {"real", "baseline", "proposed"}
    assert {r["realness"] for r in block1} == {"55"} and {r["reasons"] for r in block1} == {"2;6"}
    assert {r["n_reasons"] for r in block1} == {"2"} and {r["confidence"] for r in block1} == {""}
    assert {r["image_source"] for r in block2} == {"real"}
    assert [r["phase"] for r in block2] == ["pre", "post", "pre", "post"]
    for pre, post in zip(block2[::2], block2[1::2]):
        assert pre["case"] == post["case"] and pre["cf_model"] == post["cf_model"] in ("baseline", "proposed")
        assert pre["cf_model"] == participant.cf_assignment[pre["case"]]
    assert {r["confidence"] for r in block2} == {"5"} and {r["realness"] for r in block2} == {""}
    for row in rows:
        # Independently worked out: correct means the answer names the condition the shown image depicts.
        stimulus = Stimulus.objects.get(case__label=row["case"], source=row["image_source"])
        assert row["true_condition"] == stimulus.condition
        assert row["correct"] == ("1" if stimulus.condition == "effusion" else "0")
        assert row["answered_at"].endswith("Z") and row["rt_ms"] == "1500"


def test_counterfactual_rows_are_scored_against_the_intervened_condition(db, media_root):
    from tests.study.factories import StudyFactory, add_block1_case, add_block2_case

    study = StudyFactory(block1_patients=2, block2_cases=1)
    add_block1_case(study, 0, cf_condition="pneumonia")  # a healthy patient made to show pneumonia
    add_block1_case(study, 1)
    add_block2_case(study, 0)
    services.open_study(study)
    participant, _ = services.start_session(study, external_id="pid")
    run_whole_session(participant, answer=always("pneumonia"))
    rows = [r for r in read(answers_csv(study)) if r["case"] == "P01"]
    by_source = {r["image_source"]: r for r in rows}
    assert by_source["real"]["true_condition"] == "healthy" and by_source["real"]["correct"] == "0"
    assert by_source["baseline"]["true_condition"] == "pneumonia" and by_source["baseline"]["correct"] == "1"
    assert by_source["proposed"]["correct"] == "1"


def test_external_ids_are_pseudonymised_unless_raw_ids_are_asked_for(participant, open_study):
    run_whole_session(participant)
    hashed = read(answers_csv(open_study))[0]["external_id"]
    assert participant.external_id not in answers_csv(open_study)
    assert hashed == export.pseudonymise(open_study, participant.external_id) and len(hashed) == 17
    assert read(answers_csv(open_study, raw_ids=True))[0]["external_id"] == participant.external_id


def test_cells_that_look_like_formulas_are_escaped():
    assert export.escape_cell("=HYPERLINK(1)") == "'=HYPERLINK(1)"
    assert export.escape_cell("+1") == "'+1" and export.escape_cell("-1") == "'-1" and export.escape_cell("@x") == "'@x"
    assert export.escape_cell("healthy") == "healthy" and export.escape_cell(55) == 55


def test_an_exclusion_reason_with_a_formula_is_escaped_in_the_participants_csv(participant, open_study):
    services.exclude_participant(participant, "=cmd|' /C calc'!A0")
    buffer = io.StringIO()
    export.write_participants_csv(open_study, buffer)
    assert read(buffer.getvalue())[0]["exclusion_reason"].startswith("'=")


def test_participants_csv_columns_and_values(participant, open_study):
    run_whole_session(participant)
    buffer = io.StringIO()
    export.write_participants_csv(open_study, buffer)
    text = buffer.getvalue()
    assert text.splitlines()[0] == (
        "participant,external_id,status,seed,order,started_at,completed_at,duration_s,excluded,exclusion_reason,"
        "cf_assignment,simulated"
    )
    row = read(text)[0]
    participant.refresh_from_db()
    assert row["participant"] == "P001" and row["status"] == "completed" and row["excluded"] == "0"
    assert row["seed"] == str(participant.seed)
    assert len(row["order"].split(";")) == 9 + 4 and row["order"].startswith("1:P0")
    assert float(row["duration_s"]) >= 0
    assert row["cf_assignment"] == ";".join(f"{c}:{m}" for c, m in sorted(participant.cf_assignment.items()))


def test_export_study_command_writes_both_files(participant, open_study, tmp_path, capsys):
    run_whole_session(participant)
    call_command("export_study", open_study.slug, "--out", str(tmp_path))
    assert len(read((tmp_path / f"{open_study.slug}-answers.csv").read_text())) == 13
    assert len(read((tmp_path / f"{open_study.slug}-participants.csv").read_text())) == 1
    assert "13 answers" in capsys.readouterr().out


def test_simulated_participants_are_marked_in_both_files(participant, open_study):
    bot, _ = services.start_session(open_study, external_id="sim-0-0001")
    services.mark_simulated(bot)
    run_whole_session(participant)
    run_whole_session(bot)
    answers = read(answers_csv(open_study))
    assert {r["simulated"] for r in answers if r["participant"] == participant.label} == {"0"}
    assert {r["simulated"] for r in answers if r["participant"] == bot.label} == {"1"}
    buffer = io.StringIO()
    export.write_participants_csv(open_study, buffer)
    flags = {r["participant"]: r["simulated"] for r in read(buffer.getvalue())}
    assert flags == {participant.label: "0", bot.label: "1"}

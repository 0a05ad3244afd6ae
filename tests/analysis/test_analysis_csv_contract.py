import io

import pandas as pd
import pytest

from analysis import frames
from tests.analysis.tables import block1_row, block2_rows


def csv_text(rows, columns=frames.ANSWER_COLUMNS):
    buffer = io.StringIO()
    pd.DataFrame(rows, columns=list(columns)).to_csv(buffer, index=False)
    return buffer.getvalue()


def read(text):
    return frames.tidy_answers(frames._read_csv(io.StringIO(text), "answers.csv"), "answers.csv")


def good_rows():
    return [
        block1_row("p1", "A", "real", "effusion", "effusion", realness=80, reasons=(1, 2)),
        block1_row("p1", "A", "proposed", "healthy", "pneumonia", realness=40),
        *block2_rows("p1", "C1", "proposed", "pneumonia", "healthy", "pneumonia", 2, 5),
    ]


def test_a_valid_export_is_read_with_types():
    answers = read(csv_text(good_rows()))
    assert len(answers) == 4
    assert answers["block"].tolist() == [1, 1, 2, 2]
    assert answers["phase"].tolist()[2:] == ["pre", "post"]
    assert answers["correct"].tolist() == [1.0, 0.0, 0.0, 1.0]
    assert answers.loc[0, "n_reasons"] == 2 and answers.loc[0, "reasons"] == "1;2"
    assert answers.loc[3, "confidence"] == 5


def test_formula_escaped_cells_are_unescaped():
    rows = good_rows()
    rows[0]["external_id"] = "'=cmd"
    assert read(csv_text(rows)).loc[0, "external_id"] == "=cmd"


def test_missing_or_extra_columns_are_named():
    text = csv_text(good_rows()).replace("rt_ms", "reaction_time")
    with pytest.raises(frames.FrameError, match="missing column\\(s\\) rt_ms; unexpected column\\(s\\) reaction_time"):
        read(text)


@pytest.mark.parametrize(
    ("row", "column", "value", "message"),
    [
        (0, "block", "3", "must be one of 1|2"),
        (0, "phase", "pre", "must be one of block1"),
        (2, "image_source", "proposed", "must be one of real"),
        (2, "cf_model", "", "must be one of baseline|proposed"),
        (1, "cf_model", "baseline", "must be one of (empty)"),
        (1, "diagnosis", "flu", "must be one of healthy|effusion|pneumonia"),
        (1, "correct", "1", "disagrees with diagnosis == true_condition"),
        (0, "realness", "101", "above 100"),
        (0, "realness", "high", "not a plain decimal number"),
        (3, "confidence", "7", "above 6"),
        (3, "confidence", "", "required here but empty"),
        (0, "n_reasons", "3", "differs from the number of entries in reasons"),
        (0, "block1_design", "crossed", "must be one of paired|counterbalanced"),
        (1, "block1_design", "counterbalanced", "differs from row 1 (a study has one design)"),
        (0, "simulated", "", "must be one of 0|1"),
        (1, "simulated", "1", "differs between rows of the same participant"),
    ],
)
def test_each_broken_cell_is_reported_by_row_and_column(row, column, value, message):
    rows = good_rows()
    rows[row][column] = value
    with pytest.raises(frames.FrameError) as raised:
        read(csv_text(rows))
    text = str(raised.value)
    assert f"row {row + 1} (line {row + 2}), column {column}" in text
    assert message in text
    assert text.startswith("answers.csv: ")


def test_a_second_answer_to_the_same_trial_is_refused():
    rows = good_rows()
    rows.append(dict(rows[1]))
    with pytest.raises(frames.FrameError, match="row 5 .*a second answer to the same trial"):
        read(csv_text(rows))


def test_unanswered_trials_are_missing_not_wrong():
    rows = good_rows()
    rows.append(block1_row("p1", "A", "baseline", "healthy", None))
    answers = read(csv_text(rows))
    unanswered = answers[answers["image_source"] == "baseline"].iloc[0]
    assert pd.isna(unanswered["correct"]) and pd.isna(unanswered["diagnosis"])


def test_files_that_are_not_csv_or_not_there_give_clear_errors(tmp_path):
    with pytest.raises(frames.FrameError, match="file not found"):
        frames.read_answers_csv(tmp_path / "missing.csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(frames.FrameError, match="empty"):
        frames.read_answers_csv(empty)


def participants_table(rows):
    return frames.tidy_participants(
        pd.DataFrame(rows, columns=list(frames.PARTICIPANT_COLUMNS)).astype(object).fillna("").astype(str),
        "participants.csv",
    )


def participant(name, status="completed", excluded=0, reason="", simulated=0):
    return {
        "participant": name,
        "status": status,
        "excluded": excluded,
        "exclusion_reason": reason,
        "simulated": simulated,
    }


def test_only_completed_non_excluded_participants_count_by_default():
    answers = read(
        csv_text([block1_row(p, "A", "real", "effusion", "effusion") for p in ("p1", "p2", "p3", "p4", "p5")])
    )
    listed = participants_table(
        [
            participant("p1"),
            participant("p2", status="timed_out"),
            participant("p3", excluded=1, reason="failed attention check 1"),
            participant("p4", status="withdrawn", excluded=1, reason="withdrew from the study"),
        ]
    )
    kept, exclusions = frames.select_participants(answers, listed)
    assert kept["participant"].unique().tolist() == ["p1"]
    reasons = {e["participant"]: e["reason"] for e in exclusions}
    assert reasons == {
        "p2": "did not complete (status timed_out)",
        "p3": "failed attention check 1",
        "p4": "withdrew from the study",
        "p5": "not listed in the participants file",
    }
    kept, exclusions = frames.select_participants(answers, listed, include_incomplete=True)
    assert sorted(kept["participant"].unique()) == ["p1", "p2"]


def test_without_a_participants_file_completeness_is_read_from_the_answers():
    rows = [block1_row("p1", "A", s, "effusion", "effusion") for s in ("real", "baseline", "proposed")]
    rows += [block1_row("p2", "A", s, "effusion", "effusion") for s in ("real", "baseline")]
    rows += block2_rows("p1", "C1", "baseline", "pneumonia", "pneumonia", "pneumonia")
    rows += block2_rows("p2", "C1", "baseline", "pneumonia", "pneumonia", None)
    answers = read(csv_text(rows))
    kept, exclusions = frames.select_participants(answers)
    assert kept["participant"].unique().tolist() == ["p1"]
    assert exclusions == [
        {"participant": "p2", "status": "unknown", "reason": "incomplete: 2 of 3 Block-1 and 1 of 2 Block-2 answers"}
    ]
    assert frames.select_participants(answers, include_incomplete=True)[1] == []


def test_participants_file_with_an_unknown_status_is_refused():
    with pytest.raises(frames.FrameError, match="row 1 .*column status = 'finished'"):
        participants_table([participant("p1", status="finished")])


def test_the_simulated_flag_is_read_from_both_tables():
    rows = good_rows() + [block1_row("bot", "A", "real", "effusion", "effusion")]
    rows[-1]["simulated"] = 1
    answers = read(csv_text(rows))
    assert answers.groupby("participant")["simulated"].first().to_dict() == {"bot": 1, "p1": 0}
    listed = participants_table([participant("p1"), participant("bot", simulated=1)])
    assert listed["simulated"].tolist() == [0, 1]
    with pytest.raises(frames.FrameError, match="column simulated = 'yes'"):
        participants_table([participant("p1", simulated="yes")])


def test_real_and_simulated_participants_are_kept_apart():
    rows = [block1_row(p, "A", "real", "effusion", "effusion") for p in ("p1", "p2", "bot1", "bot2", "bot3")]
    for row in rows[2:]:
        row["simulated"] = 1
    answers = read(csv_text(rows))
    assert frames.reader_counts(answers) == {"real": 2, "simulated": 3}
    real, _ = frames.keep_readers(answers)
    assert sorted(real["participant"].unique()) == ["p1", "p2"]
    simulated, _ = frames.keep_readers(answers, readers="simulated")
    assert sorted(simulated["participant"].unique()) == ["bot1", "bot2", "bot3"]
    everyone, _ = frames.keep_readers(answers, readers="all")
    assert everyone["participant"].nunique() == 5
    # The participants table decides for participants without answers and filters alongside.
    listed = participants_table([participant("p1"), participant("bot1", simulated=1), participant("bot9", simulated=1)])
    assert frames.reader_counts(answers, listed) == {"real": 2, "simulated": 4}
    _, simulated_listed = frames.keep_readers(answers, listed, readers="simulated")
    assert simulated_listed["participant"].tolist() == ["bot1", "bot9"]
    with pytest.raises(frames.FrameError, match="readers must be one of real, simulated, all"):
        frames.keep_readers(answers, readers="bots")


def test_a_counterbalanced_table_with_a_second_image_of_a_patient_is_refused():
    rows = [
        block1_row("p1", "A", "real", "effusion", "effusion", block1_design="counterbalanced"),
        block1_row("p1", "B", "baseline", "healthy", "healthy", block1_design="counterbalanced"),
        block1_row("p1", "A", "proposed", "healthy", "healthy", block1_design="counterbalanced"),
    ]
    with pytest.raises(frames.FrameError, match="row 3 .*column case = 'A': a second Block-1 image of this patient"):
        read(csv_text(rows))
    rows[2]["case"] = "C"
    assert read(csv_text(rows))["block1_design"].unique().tolist() == ["counterbalanced"]


def test_completeness_without_a_participants_file_follows_the_design():
    """Counterbalanced: a participant is complete with one answer per patient, not one per (patient, source)."""

    def row(participant, case, source, diagnosis="healthy"):
        return block1_row(participant, case, source, "healthy", diagnosis, block1_design="counterbalanced")

    rows = [row("p1", "A", "real"), row("p1", "B", "baseline"), row("p1", "C", "proposed")]
    rows += [row("p2", "A", "baseline"), row("p2", "B", "proposed"), row("p2", "C", "real", diagnosis=None)]
    kept, exclusions = frames.select_participants(read(csv_text(rows)))
    assert kept["participant"].unique().tolist() == ["p1"]
    assert exclusions == [
        {"participant": "p2", "status": "unknown", "reason": "incomplete: 2 of 3 Block-1 and 0 of 0 Block-2 answers"}
    ]

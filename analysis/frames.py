"""From the study's answers to the tidy table the statistics read: exported CSV files or the database.

The answers CSV is the study export's contract: one row per answer with exactly the columns in `ANSWER_COLUMNS`.
Reading it checks every row and reports the problems by row number and column; nothing is analysed from a file that
breaks the contract. The database path runs the study platform's own export and parses its output with the same
code, so both paths give the same table.
"""

import csv
import io
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.stats import BLOCK1_DESIGNS, CONDITIONS, MODELS, SOURCES, block1_design
from studycolumns import ANSWER_COLUMNS, PARTICIPANT_COLUMNS

# The participant statuses the study platform exports (studyplatform.models.Participant.Status); `block1` and
# `block2` are participants still in the study, answering that block.
STATUSES = ("started", "block1", "block2", "completed", "timed_out", "withdrawn", "excluded")
NUMERIC_RANGES = {
    "realness": (1, 100),
    "slider_start": (1, 100),
    "confidence": (1, 6),
    "n_reasons": (0, None),
    "rt_ms": (0, None),
    "trial_index": (0, None),
}
MAX_REPORTED_PROBLEMS = 12


class FrameError(ValueError):
    """The input breaks the export contract; the message names the file, rows and columns."""


# ---------------------------------------------------------------------------------------------------------------
# Reading CSV text


def _read_csv(source, name):
    """Every cell as text; empty cells stay empty strings. The export protects cells that a spreadsheet would run
    as a formula with a leading apostrophe, which is removed here."""
    try:
        if isinstance(source, str | Path):
            with open(source, newline="", encoding="utf-8-sig") as handle:
                text = handle.read()
        else:
            text = source.read()
            text = text.decode("utf-8-sig") if isinstance(text, bytes) else text
        table = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, quoting=csv.QUOTE_MINIMAL)
    except FileNotFoundError as error:
        raise FrameError(f"{name}: file not found") from error
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise FrameError(f"{name}: not a readable CSV file ({error})") from error
    except pd.errors.EmptyDataError as error:
        raise FrameError(f"{name}: the file is empty (no header row)") from error
    if "'" not in text:  # nothing escaped: the cell-by-cell pass below would change nothing
        return table
    return table.apply(lambda column: column.str.replace(r"^'(?=[=+\-@])", "", regex=True))


def _check_columns(table, expected, name):
    missing = [c for c in expected if c not in table.columns]
    extra = [c for c in table.columns if c not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing column(s) {', '.join(missing)}")
        if extra:
            parts.append(f"unexpected column(s) {', '.join(extra)}")
        raise FrameError(f"{name}: {'; '.join(parts)} (expected exactly: {', '.join(expected)})")


class _Problems:
    """Collects contract violations as 'row N, column C: ...' lines (row 1 is the first data row, file line 2),
    quoting each cell as it stands in `table`, the input as read."""

    def __init__(self, name, table):
        self.name, self.table, self.lines, self.count = name, table, [], 0

    def flag(self, mask, column, message):
        rows = np.flatnonzero(np.asarray(mask, dtype=bool))
        for position in rows:
            self.count += 1
            if len(self.lines) < MAX_REPORTED_PROBLEMS:
                value = self.table[column].iloc[position] if column in self.table.columns else ""
                self.lines.append(f"row {position + 1} (line {position + 2}), column {column} = {value!r}: {message}")

    def raise_if_any(self):
        if self.count:
            more = f"\n  ... and {self.count - len(self.lines)} more" if self.count > len(self.lines) else ""
            raise FrameError(f"{self.name}: {self.count} problem(s)\n  " + "\n  ".join(self.lines) + more)


def _numbers(cells, column, problems, required):
    text = cells[column]
    values = pd.to_numeric(text.where(text != ""), errors="coerce")
    problems.flag((text != "") & values.isna(), column, "not a plain decimal number")
    if required is not None:
        problems.flag(required & (text == ""), column, "required here but empty")
    low, high = NUMERIC_RANGES.get(column, (None, None))
    if low is not None:
        problems.flag(values < low, column, f"below {low}")
    if high is not None:
        problems.flag(values > high, column, f"above {high}")
    return values.astype(float)


def _one_of(cells, column, allowed, problems, mask=None, allow_empty=False):
    values = cells[column]
    ok = values.isin(allowed) | ((values == "") if allow_empty else False)
    if mask is not None:
        ok = ok | ~mask
    shown = "|".join(value or "(empty)" for value in (*allowed, *([""] if allow_empty else [])))
    problems.flag(~ok, column, f"must be one of {shown}")
    return values


def tidy_answers(table, name="answers"):
    """Validate an answers table of text cells against the export contract and return the typed tidy table."""
    _check_columns(table, ANSWER_COLUMNS, name)
    table = table.reset_index(drop=True)
    problems = _Problems(name, table)
    # Every check reads the stripped cells; stripping each column once keeps the checks cheap on large files.
    cells = table.apply(lambda column: column.str.strip())
    for column in ("participant", "case"):
        problems.flag(cells[column] == "", column, "must not be empty")
    block_text = _one_of(cells, "block", ("1", "2"), problems)
    block1, block2 = block_text == "1", block_text == "2"
    _one_of(cells, "phase", ("block1",), problems, mask=block1)
    _one_of(cells, "phase", ("pre", "post"), problems, mask=block2)
    _one_of(cells, "image_source", SOURCES, problems, mask=block1)
    _one_of(cells, "image_source", ("real",), problems, mask=block2)
    _one_of(cells, "cf_model", ("",), problems, mask=block1)
    _one_of(cells, "cf_model", MODELS, problems, mask=block2)
    _one_of(cells, "true_condition", CONDITIONS, problems)
    diagnosis = _one_of(cells, "diagnosis", CONDITIONS, problems, allow_empty=True)
    answered = diagnosis != ""
    correct_text = _one_of(cells, "correct", ("0", "1"), problems, mask=answered)
    _one_of(cells, "correct", ("",), problems, mask=~answered)
    disagrees = (
        answered & correct_text.isin(("0", "1")) & ((correct_text == "1") != (diagnosis == cells["true_condition"]))
    )
    problems.flag(disagrees, "correct", "disagrees with diagnosis == true_condition")
    numbers = {
        "trial_index": _numbers(cells, "trial_index", problems, required=pd.Series(True, index=table.index)),
        "realness": _numbers(cells, "realness", problems, required=block1 & answered),
        "slider_start": _numbers(cells, "slider_start", problems, required=None),
        "n_reasons": _numbers(cells, "n_reasons", problems, required=block1 & answered),
        "confidence": _numbers(cells, "confidence", problems, required=block2 & answered),
        "rt_ms": _numbers(cells, "rt_ms", problems, required=None),
    }
    reasons = cells["reasons"]
    # Counted once per distinct reasons text: a large file repeats the same few combinations.
    counted = reasons.map({text: len([r for r in text.split(";") if r.strip()]) for text in reasons.unique()})
    problems.flag(
        (reasons != "") & numbers["n_reasons"].notna() & (counted != numbers["n_reasons"]),
        "n_reasons",
        "differs from the number of entries in reasons",
    )
    keys = ["participant", "block", "case", "image_source", "phase"]
    problems.flag(table.duplicated(keys, keep="first"), "phase", "a second answer to the same trial")
    design = _one_of(cells, "block1_design", BLOCK1_DESIGNS, problems)
    if len(design):
        problems.flag(design != design.iloc[0], "block1_design", "differs from row 1 (a study has one design)")
    # The counterbalanced design shows each patient once to a participant: a second image of the patient breaks it.
    seen_twice = block1 & table.duplicated(["participant", "block", "case"], keep="first")
    problems.flag(
        seen_twice & (design == "counterbalanced"),
        "case",
        "a second Block-1 image of this patient for this participant (the counterbalanced design shows one)",
    )
    simulated = _one_of(cells, "simulated", ("0", "1"), problems)
    mixed = simulated.groupby(cells["participant"]).transform("nunique") > 1
    problems.flag(mixed, "simulated", "differs between rows of the same participant")
    problems.raise_if_any()

    tidy = pd.DataFrame(
        {
            "participant": cells["participant"],
            "external_id": cells["external_id"],
            "block": block_text.astype(int),
            "trial_index": numbers["trial_index"].astype(int),
            "case": cells["case"],
            "image_source": cells["image_source"],
            "true_condition": cells["true_condition"],
            "phase": cells["phase"],
            "cf_model": cells["cf_model"],
            "diagnosis": diagnosis.where(answered),
            "correct": pd.to_numeric(correct_text.where(answered), errors="coerce").astype(float),
            "realness": numbers["realness"],
            "slider_start": numbers["slider_start"],
            "reasons": reasons,
            "n_reasons": numbers["n_reasons"],
            "confidence": numbers["confidence"],
            "rt_ms": numbers["rt_ms"],
            "answered_at": cells["answered_at"],
            "block1_design": design,
            "simulated": pd.to_numeric(simulated, errors="coerce").astype(int),
        }
    )
    # The columns of questions added to the question table after this module's checks were written: carried as
    # text, in the contract's order, for whoever analyses them.
    tidy = tidy.assign(**{column: cells[column] for column in ANSWER_COLUMNS if column not in tidy})[
        list(ANSWER_COLUMNS)
    ]
    phase_order = tidy["phase"].map({"block1": 0, "pre": 1, "post": 2})
    order = tidy.assign(_phase=phase_order).sort_values(
        ["participant", "block", "trial_index", "_phase"], kind="stable"
    )
    return order.drop(columns="_phase").reset_index(drop=True)


def tidy_participants(table, name="participants"):
    _check_columns(table, PARTICIPANT_COLUMNS, name)
    table = table.reset_index(drop=True)
    problems = _Problems(name, table)
    cells = table.apply(lambda column: column.str.strip())
    problems.flag(cells["participant"] == "", "participant", "must not be empty")
    problems.flag(table["participant"].duplicated(), "participant", "listed twice")
    _one_of(cells, "status", STATUSES, problems)
    _one_of(cells, "excluded", ("0", "1"), problems)
    _one_of(cells, "simulated", ("0", "1"), problems)
    problems.raise_if_any()
    tidy = cells
    tidy["excluded"] = tidy["excluded"].astype(int)
    tidy["simulated"] = tidy["simulated"].astype(int)
    return tidy


def read_answers_csv(path):
    return tidy_answers(_read_csv(path, str(path)), str(path))


def read_participants_csv(path):
    return tidy_participants(_read_csv(path, str(path)), str(path))


def answers_from_records(records, name="answers"):
    """Tidy table from export-style records (dicts of cell values, e.g. simulated answers)."""
    table = pd.DataFrame.from_records(list(records), columns=list(ANSWER_COLUMNS))
    return tidy_answers(table.astype(object).fillna("").astype(str), name)


# ---------------------------------------------------------------------------------------------------------------
# Who counts

# Whose answers an analysis reads: real participants (the default), simulated readers (simulate_participants), or
# both, which only an explicit request gives. The two are never mixed silently.
READERS = ("real", "simulated", "all")


def reader_counts(answers, participants=None):
    """{"real": n, "simulated": n}: the participants of each kind in the input (answers and participants table)."""
    flags = _simulated_flags(answers, participants)
    simulated = sum(flags.values())
    return {"real": len(flags) - simulated, "simulated": simulated}


def keep_readers(answers, participants=None, readers="real"):
    """The answers (and participants table) of the real participants only (`readers="real"`), of the simulated
    ones only ("simulated"), or of both ("all")."""
    if readers not in READERS:
        raise FrameError(f"readers must be one of {', '.join(READERS)}, got {readers!r}")
    if readers == "all":
        return answers, participants
    wanted = readers == "simulated"
    flags = _simulated_flags(answers, participants)
    keep = {participant for participant, simulated in flags.items() if simulated == wanted}
    answers = answers[answers["participant"].isin(keep)].reset_index(drop=True)
    if participants is not None:
        participants = participants[participants["participant"].isin(keep)].reset_index(drop=True)
    return answers, participants


def _simulated_flags(answers, participants):
    """participant -> True for a simulated reader; the participants table wins over the answers."""
    # One row per participant (its last, as a row-by-row pass would keep) rather than every answer.
    last = answers.drop_duplicates("participant", keep="last")
    flags = {p: bool(s) for p, s in zip(last["participant"], last["simulated"])}
    if participants is not None:
        flags.update((p, bool(s)) for p, s in zip(participants["participant"], participants["simulated"]))
    return flags


def select_participants(answers, participants=None, include_incomplete=False):
    """Keep the answers of the participants who count and list everyone left out with the reason.

    With a participants table: researcher-excluded and withdrawn participants never count; participants who did
    not complete count only with `include_incomplete`. Without one, completeness is read from the answers: a
    participant is complete when they answered every Block-1 image and both Block-2 decisions of every case that
    appears anywhere in the file."""
    exclusions = []
    if participants is not None:
        listed = participants.set_index("participant")
        for participant, row in listed.iterrows():
            reason = None
            if row["excluded"] == 1:
                reason = row["exclusion_reason"] or "excluded by the researcher"
            elif row["status"] == "withdrawn":
                reason = "withdrawn"
            elif row["status"] != "completed" and not include_incomplete:
                reason = f"did not complete (status {row['status']})"
            if reason:
                exclusions.append({"participant": participant, "status": row["status"], "reason": reason})
        for participant in sorted(set(answers["participant"]) - set(listed.index)):
            exclusions.append(
                {"participant": participant, "status": "unknown", "reason": "not listed in the participants file"}
            )
    elif not include_incomplete:
        exclusions = _incomplete_from_answers(answers)
    left_out = {entry["participant"] for entry in exclusions}
    kept = answers[~answers["participant"].isin(left_out)].reset_index(drop=True)
    return kept, sorted(exclusions, key=lambda entry: entry["participant"])


def _incomplete_from_answers(answers):
    answered = answers.dropna(subset=["diagnosis"])
    # Paired: every image of every patient; counterbalanced: every patient once.
    block1_trial = ["case"] if block1_design(answers) == "counterbalanced" else ["case", "image_source"]
    expected = {
        1: answers.loc[answers["block"] == 1, block1_trial].drop_duplicates().shape[0],
        2: answers.loc[answers["block"] == 2, ["case", "phase"]].drop_duplicates().shape[0],
    }
    # One grouped count of answers per participant and block; a participant without a single answer still counts
    # (as zero of each).
    counts = (
        pd.crosstab(answered["participant"], answered["block"])
        .reindex(index=sorted(answers["participant"].unique()), columns=[1, 2], fill_value=0)
        .astype(int)
    )
    short = counts[(counts[1] < expected[1]) | (counts[2] < expected[2])]
    return [
        {
            "participant": participant,
            "status": "unknown",
            "reason": f"incomplete: {block1} of {expected[1]} Block-1 and {block2} of {expected[2]} Block-2 answers",
        }
        for participant, block1, block2 in zip(short.index, short[1], short[2])
    ]


# ---------------------------------------------------------------------------------------------------------------
# The database


def answers_from_study(slug):
    """(answers, participants) of a study in the database, built by the study platform's own CSV export and read
    back through the contract above: the database path and `--from-csv` see byte-identical input."""
    from studyplatform.export import write_answers_csv, write_participants_csv
    from studyplatform.models import Study

    study = Study.objects.filter(slug=slug).first()
    if study is None:
        raise FrameError(f"no study with the slug {slug!r}")
    tables = []
    for writer, tidy, what in (
        (write_answers_csv, tidy_answers, "answers"),
        (write_participants_csv, tidy_participants, "participants"),
    ):
        buffer = io.StringIO()
        writer(study, buffer)
        buffer.seek(0)
        name = f"study {slug} ({what})"
        tables.append(tidy(_read_csv(buffer, name), name))
    return tables[0], tables[1]

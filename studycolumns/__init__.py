"""The columns of the tidy tables a study exports and the analysis reads: one declaration for both sides.

The study app writes them (`studyplatform.export`) and the analysis checks and reads them (`analysis.frames`,
`analysis.stats`), so this package sits below both and imports nothing of the project but itself: the study app
never imports the analysis, and the analysis reads the contract without the web framework. The answer columns come
from the question table (`studycolumns.questions`), so a question declared there is exported and read without a
second declaration.
"""

from studycolumns.questions import QUESTIONS

# One row per answer. `simulated` is 1 for the answers of simulated readers (simulate_participants), in both tables,
# so that no analysis mixes them in.
ANSWER_COLUMNS = (
    "participant",
    "external_id",
    "block",
    "trial_index",
    "case",
    "image_source",
    "true_condition",
    "phase",
    "cf_model",
    # The questions' columns: diagnosis, correct, realness, slider_start, reasons, n_reasons, confidence, rt_ms, then
    # those of any question added to the table.
    *(column for question in QUESTIONS for column in question.export_columns),
    "answered_at",
    "block1_design",
    "simulated",
)
# One row per participant.
PARTICIPANT_COLUMNS = (
    "participant",
    "external_id",
    "status",
    "seed",
    "order",
    "started_at",
    "completed_at",
    "duration_s",
    "excluded",
    "exclusion_reason",
    "cf_assignment",
    "simulated",
)

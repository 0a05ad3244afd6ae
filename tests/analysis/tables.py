"""Small hand-made answer tables for the analysis tests, written as export rows and read through the CSV contract."""

from analysis.frames import answers_from_records


def block1_row(
    participant, case, source, truth, diagnosis, realness=50, reasons=(), trial_index=0, block1_design="paired"
):
    return {
        "participant": participant,
        "external_id": f"x-{participant}",
        "block": 1,
        "trial_index": trial_index,
        "case": case,
        "image_source": source,
        "true_condition": truth,
        "phase": "block1",
        "cf_model": "",
        "diagnosis": diagnosis or "",
        "correct": "" if not diagnosis else int(diagnosis == truth),
        "realness": realness if diagnosis else "",
        "slider_start": 50,
        "reasons": ";".join(str(r) for r in reasons),
        "n_reasons": len(reasons) if diagnosis else "",
        "confidence": "",
        "rt_ms": 3000,
        "answered_at": "2025-06-02T10:00:00Z",
        "block1_design": block1_design,
        "simulated": 0,
    }


def block2_rows(
    participant,
    case,
    model,
    truth,
    first,
    final,
    first_confidence=3,
    final_confidence=3,
    trial_index=0,
    block1_design="paired",
):
    """The pre and post rows of one Block-2 case; `final=None` leaves the post answer out (a missing answer)."""
    rows = []
    for phase, diagnosis, confidence in (("pre", first, first_confidence), ("post", final, final_confidence)):
        if diagnosis is None:
            continue
        rows.append(
            {
                "participant": participant,
                "external_id": f"x-{participant}",
                "block": 2,
                "trial_index": trial_index,
                "case": case,
                "image_source": "real",
                "true_condition": truth,
                "phase": phase,
                "cf_model": model,
                "diagnosis": diagnosis,
                "correct": int(diagnosis == truth),
                "realness": "",
                "slider_start": "",
                "reasons": "",
                "n_reasons": "",
                "confidence": confidence,
                "rt_ms": 2500,
                "answered_at": "2025-06-02T10:10:00Z",
                "block1_design": block1_design,
                "simulated": 0,
            }
        )
    return rows


def tidy(rows):
    return answers_from_records(rows, "hand-made table")

"""Randomisation and counterbalancing of a participant's session, as pure functions of a seed and the stimulus set.

Kept free of the database so that the constraints (no patient twice in a row, every case with each model equally
often) can be tested exhaustively and a stored seed reproduces the stored order.
"""

import random
import secrets

MODELS = ("baseline", "proposed")
SOURCES = ("real", "baseline", "proposed")
PAIRED, COUNTERBALANCED = "paired", "counterbalanced"


def spread_order(groups, rng):
    """Shuffle the items of `groups` ({group: [items]}) so that two items of one group are never adjacent.

    At every step a group is drawn at random among those that differ from the previous one and keep the rest
    feasible (a group with m items left needs the others to supply at least m - 1 separators). Weighting by the
    items left keeps the draw close to a uniform shuffle. Raises ValueError when no such order exists.
    """
    remaining = {group: rng.sample(list(items), len(items)) for group, items in groups.items() if items}
    total = sum(len(items) for items in remaining.values())
    order, previous = [], None
    while total:
        candidates = []
        for group, items in sorted(remaining.items(), key=lambda kv: str(kv[0])):
            if group == previous or not items:
                continue
            # After drawing from `group`, the rest must be arrangeable without `group` first: `group` then fits in
            # at most floor(n/2) of the n places left, every other group in at most ceil(n/2).
            left_after = total - 1
            others_fit = all(len(v) <= (left_after + 1) // 2 for g, v in remaining.items() if g != group)
            if others_fit and len(items) - 1 <= left_after // 2:
                candidates.append(group)
        if not candidates:
            raise ValueError("no order keeps items of the same group apart: one group holds too many items")
        weights = [len(remaining[group]) for group in candidates]
        group = rng.choices(candidates, weights=weights)[0]
        order.append(remaining[group].pop())
        previous = group
        total -= 1
    return order


def model_for(participant_index, case_position):
    """Latin square over (participant, case): consecutive participants see opposite models on every case, so each
    case is shown with each model equally often, and each participant sees each model on half of the cases."""
    return MODELS[(participant_index + case_position) % 2]


def source_for(participant_index, rank):
    """Latin square over (participant, patient) for the counterbalanced Block-1 design: participant group
    `participant_index mod 3` sees the patient of Latin-square rank `rank` as SOURCES[(index + rank) mod 3], so over
    three consecutive participants every patient is shown once as real, once as baseline and once as proposed."""
    return SOURCES[(participant_index + rank) % 3]


def latin_square_ranks(cases):
    """Rank of each Block-1 patient in the Latin square: patients sorted by (condition of the real image, condition
    of the counterfactuals, position, label), i.e. grouped by what each source of them shows. Consecutive ranks get
    consecutive sources, so within one participant each source takes its share of every such group (differing by at
    most one patient), and each source shows every condition in about the same proportions.

    cases: [(label, position, true_condition, cf_condition)]. Returns {label: rank}."""
    ordered = sorted(cases, key=lambda case: (case[2], case[3], case[1], case[0]))
    return {case[0]: rank for rank, case in enumerate(ordered)}


def block1_sources(participant_index, cases):
    """{patient label: source shown} for one participant of a counterbalanced study (see `latin_square_ranks`)."""
    return {label: source_for(participant_index, rank) for label, rank in latin_square_ranks(cases).items()}


def _slider_starts(rng, slider_ranges, phase):
    """{start field: random start} of the sliders a trial of `phase` shows (none: no draw, so a plan's other draws
    do not depend on sliders that other phases have)."""
    return {field: rng.randint(low, high) for field, (low, high) in slider_ranges.get(phase, ())}


def new_seed():
    return secrets.randbits(48)


def build_plan(
    *,
    seed,
    participant_index,
    block1_cases,
    block2_cases,
    slider_ranges,
    attention_checks=(),
    block1_design=PAIRED,
    block1_conditions=(),
):
    """Expand a participant's session into the list of trials, in serving order.

    block1_cases: [(case_label, {source: stimulus_id})]; block2_cases: [(case_label, position, real_id,
    {model: cf_stimulus_id})]. In the paired Block-1 design every image of every patient is shown; in the
    counterbalanced design each patient is shown once, as the source `block1_sources` assigns to this participant
    (block1_conditions: [(case_label, position, true_condition, cf_condition)], the Latin square's input). Returns
    (plan, cf_assignment). Every trial carries a random opaque id, which is what the participant submits, so a trial
    id from another session matches nothing. slider_ranges: {phase: ((start field, (lowest, highest)), ...)}, the
    sliders of each phase (`questions.slider_ranges`), whose random starts each trial of the phase draws.
    """
    rng = random.Random(seed)
    if block1_design == COUNTERBALANCED:
        shown = block1_sources(participant_index, block1_conditions)
        groups = {label: [(label, shown[label], sources[shown[label]])] for label, sources in block1_cases}
    elif block1_design == PAIRED:
        groups = {
            label: [(label, source, stimulus_id) for source, stimulus_id in sources.items()]
            for label, sources in block1_cases
        }
    else:
        raise ValueError(f"unknown Block-1 design {block1_design!r}")
    plan = []
    checks = sorted(attention_checks, key=lambda check: check["after"])
    for index, (label, source, stimulus_id) in enumerate(spread_order(groups, rng), start=1):
        plan.append(
            {
                "block": 1,
                "phase": "block1",
                "trial_index": index,
                "case": label,
                "source": source,
                "stimulus": stimulus_id,
                **_slider_starts(rng, slider_ranges, "block1"),
            }
        )
        for number, check in enumerate(checks, start=1):
            if check["after"] == index:
                plan.append(
                    {
                        "block": 1,
                        "phase": "attention",
                        "trial_index": number,
                        "instruction": check["instruction"],
                        "expected": check["expected"],
                    }
                )

    cf_assignment = {}
    shuffled = rng.sample(list(block2_cases), len(block2_cases))
    for index, (label, position, real_id, cf_ids) in enumerate(shuffled, start=1):
        model = model_for(participant_index, position)
        cf_assignment[label] = model
        common = {"block": 2, "trial_index": index, "case": label, "stimulus": real_id, "cf_model": model}
        plan.append({**common, "phase": "pre", **_slider_starts(rng, slider_ranges, "pre")})
        plan.append(
            {**common, "phase": "post", "cf_stimulus": cf_ids[model], **_slider_starts(rng, slider_ranges, "post")}
        )

    for sequence, trial in enumerate(plan):
        trial["sequence"] = sequence
        trial["id"] = secrets.token_urlsafe(12)
    return plan, dict(sorted(cf_assignment.items()))

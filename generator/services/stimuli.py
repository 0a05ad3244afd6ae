"""Which data-set images may become reader-study stimuli: held-out splits and the stimulus screening.

The study app decides which cases need counterfactuals and imports them; these functions answer for the generator
which source images qualify, so both models' stimuli come from images neither was trained or tuned on.
"""

from generator.data import SPLITS, locate_images
from generator.data.screening import ScreeningRules, screen_sample
from generator.services.training import load_run_splits

# Stimuli come from the held-out test split: the models were trained on `train` and tuned on `valid` images.
STIMULUS_SPLITS = ("test",)


def check_stimulus_splits(splits):
    """The data-set splits stimuli may come from: `test` unless the researcher names others."""
    chosen = tuple(dict.fromkeys(splits or STIMULUS_SPLITS))
    unknown = sorted(set(chosen) - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown split(s) {', '.join(unknown)}; choose from {', '.join(SPLITS)}")
    return chosen


def screen_stimulus_sources(splits, ids, *, allowed=STIMULUS_SPLITS, screening=None):
    """Where each data-set image comes from and whether it may become a stimulus.

    `splits` are the loaded data set ({"train", "valid", "test"}); `screening` as
    `generator.data.screening.ScreeningRules.from_value` (None: the default rules, False: off). Returns
    {image id: {"split", "passed", "reasons", "age", "view", "blank_border", "rules"}}; an image outside the allowed
    splits, missing from the data set or failing a screening criterion has passed False and says why in reasons.
    """
    rules = ScreeningRules.from_value(screening)
    where = locate_images(splits)
    checks = {}
    for image_id in dict.fromkeys(str(i) for i in ids):
        if image_id not in where:
            checks[image_id] = {"split": "", "passed": False, "reasons": ["not in the data set"]}
            continue
        name, row = where[image_id]
        check = {"split": name, **screen_sample(splits[name], row, rules), "rules": rules.to_dict()}
        if name not in allowed:
            use = "trained" if name == "train" else "tuned"
            check["reasons"].insert(0, f"from the {name} split, which the models were {use} on (not held out)")
            check["passed"] = False
        checks[image_id] = check
    return checks


def screen_dataset_images(dataset, ids, *, splits=STIMULUS_SPLITS, screening=None):
    """`screen_stimulus_sources` of these image ids of a registered data set, read at its own resolution."""
    loaded = load_run_splits(dataset, dataset.resolution)
    return screen_stimulus_sources(loaded, ids, allowed=check_stimulus_splits(splits), screening=screening)


def stimulus_candidates(dataset, resolution, *, splits=STIMULUS_SPLITS, screening=None):
    """Every image of the allowed splits that passes screening, as (image id, condition name, split), in split order
    and then data-set order; and {image id: check} of the images that were screened out."""
    loaded = load_run_splits(dataset, resolution)
    allowed = check_stimulus_splits(splits)
    ids = [str(i) for name in allowed for i in loaded[name].ids]
    checks = screen_stimulus_sources(loaded, ids, allowed=allowed, screening=screening)
    conditions = loaded["train"].graph["disease"].categories
    candidates, skipped = [], {}
    for name in allowed:
        split = loaded[name]
        for row, image_id in enumerate(split.ids):
            check = checks[str(image_id)]
            if check["passed"]:
                candidates.append((str(image_id), conditions[int(split.pa["disease"][row])], name))
            else:
                skipped[str(image_id)] = check
    return candidates, skipped

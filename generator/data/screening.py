"""Screening of source radiographs before they become study stimuli: adult patients, frontal views, no large blank
border.

A reader study shows adult chest films; a child's film, a lateral view or a film letterboxed inside a wide blank
frame stands out from the other stimuli (and a model trained mostly on adults draws it poorly), so such images are
skipped unless the researcher relaxes the rule. Age and view come from the data set's metadata; the blank border is
measured from the pixels:

- a row (or column) is *blank* when the middle 90% of its pixels (5th to 95th percentile) span at most
  `BLANK_LINE_SPREAD` (3%) of the grey range: a uniform band added around a film, not the air beside a patient,
  which carries noise and gradients;
- the *border* is the band of consecutive blank rows and columns at each edge; `blank_border` is the share of the
  image area outside the inner non-blank rectangle;
- an image whose border covers more than `MAX_BLANK_BORDER` (20%) of its area is skipped. On the 313 bundled NIH
  films the measure is 0 for most, at most 15% for adult films with a dark frame, and 37% for a letterboxed film
  of a 3-year-old.
"""

from dataclasses import asdict, dataclass

import numpy as np

FRONTAL_VIEWS = ("PA", "AP")
MIN_AGE = 18.0
BLANK_LINE_SPREAD = 0.03
MAX_BLANK_BORDER = 0.20


@dataclass(frozen=True)
class ScreeningRules:
    """What a stimulus source must satisfy; None turns a criterion off."""

    min_age: float | None = MIN_AGE
    views: tuple[str, ...] | None = FRONTAL_VIEWS
    max_blank_border: float | None = MAX_BLANK_BORDER

    @classmethod
    def from_value(cls, value):
        """None -> the default rules; False -> no screening; a dict -> those rules (missing keys keep their
        default, a None value turns the criterion off); a ScreeningRules is returned as is."""
        if isinstance(value, cls):
            return value
        if value is None:
            return cls()
        if value is False:
            return cls(min_age=None, views=None, max_blank_border=None)
        if not isinstance(value, dict):
            raise ValueError(f"screening must be a dict, None or False, got {value!r}")
        unknown = set(value) - {"min_age", "views", "max_blank_border"}
        if unknown:
            raise ValueError(f"unknown screening criteria {sorted(unknown)}")
        rules = asdict(cls())
        rules.update(value)
        views = rules["views"]
        if views is not None:
            views = tuple(str(view).strip().upper() for view in views)
        min_age = None if rules["min_age"] is None else float(rules["min_age"])
        border = None if rules["max_blank_border"] is None else float(rules["max_blank_border"])
        if border is not None and not 0.0 <= border <= 1.0:
            raise ValueError(f"max_blank_border is a share of the image area (0-1), got {border}")
        return cls(min_age=min_age, views=views, max_blank_border=border)

    def to_dict(self):
        data = asdict(self)
        data["views"] = list(self.views) if self.views is not None else None
        return data


def blank_border(pixels):
    """Share of the image area in blank bands at its edges (0 = none, 1 = a blank image); `pixels` is a 2-D
    array of grey levels in [0, 1]."""
    pixels = np.asarray(pixels, dtype=np.float32)
    if pixels.ndim != 2 or pixels.size == 0:
        raise ValueError(f"expected a 2-D image, got shape {pixels.shape}")
    height, width = pixels.shape
    spread_rows = _spread(pixels)
    spread_cols = _spread(pixels.T)
    top = _leading_blank(spread_rows)
    if top == height:
        return 1.0
    bottom = _leading_blank(spread_rows[::-1])
    left = _leading_blank(spread_cols)
    right = _leading_blank(spread_cols[::-1])
    inner = (height - top - bottom) * max(width - left - right, 0)
    return float(1.0 - inner / (height * width))


def _spread(lines):
    low, high = np.percentile(lines, [5, 95], axis=1)
    return high - low


def _leading_blank(spreads):
    blank = spreads <= BLANK_LINE_SPREAD
    return int(len(blank) if blank.all() else np.argmin(blank))


def screen(pixels, age=None, view=None, rules=None):
    """Check one source image: {"passed", "reasons" (empty when passed), "age", "view", "blank_border"}.

    `pixels` are grey levels in [0, 1] (2-D); `age` in years and `view` ("PA", "AP", "LL", ...) as the data set
    records them, None when it does not. A criterion that is on and cannot be checked fails with that reason."""
    rules = ScreeningRules.from_value(rules)
    reasons = []
    if rules.min_age is not None:
        if age is None:
            reasons.append("age not recorded")
        elif age < rules.min_age:
            reasons.append(f"age {age:g} is under {rules.min_age:g}")
    if rules.views is not None:
        if not view:
            reasons.append("view position not recorded")
        elif str(view).strip().upper() not in rules.views:
            reasons.append(f"view {view} is not one of {'/'.join(rules.views)}")
    share = blank_border(pixels)
    if rules.max_blank_border is not None and share > rules.max_blank_border:
        reasons.append(f"blank border covers {share:.0%} of the image (limit {rules.max_blank_border:.0%})")
    return {
        "passed": not reasons,
        "reasons": reasons,
        "age": None if age is None else float(age),
        "view": view,
        "blank_border": round(share, 4),
    }


def view_of(dataset, row):
    """The view position a data set records for one of its images, or None."""
    image_id = dataset.ids[row]
    return dataset.info.get("view_positions", {}).get(image_id) or dataset.info.get("view")


def screen_sample(dataset, row, rules=None):
    """`screen` one image of a CXRDataset (pixels in [-1, 1], the parent `age`, the recorded view)."""
    pixels = (dataset.x[row, 0].detach().cpu().float().numpy() + 1.0) / 2.0
    age = float(dataset.pa["age"][row]) if "age" in dataset.pa else None
    return screen(pixels, age, view_of(dataset, row), rules)

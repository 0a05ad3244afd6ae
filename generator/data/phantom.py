"""Phantom chest X-rays with a known structural causal model.

The phantom is a caricature of a frontal (PA) chest radiograph: soft-tissue thorax, two dark lung fields, heart and
mediastinum with trachea and aortic knob, posterior and anterior ribs, clavicles, spine, diaphragm domes with sharp
costophrenic angles, a gastric bubble, breast shadows, exposure jitter and film noise.

Its structural causal model follows the declared graph (MIMIC_GRAPH or CHESTXRAY8_GRAPH):

    age, sex, race, wcc      roots
    disease := argmax(logits(age, wcc) + g)     Gumbel-max with the noise g stored per sample
    image   := render(age, sex, disease, u)     deterministic given the exogenous noise u

Every source of randomness of an image (anatomy jitter, rib phase, lesion side/size/lobe/texture, film-noise seed,
the disease node's Gumbel noise) lives in `u`, so the TRUE counterfactual of a sample under any intervention is
`render(intervene(pa, u, do), u)`. Lesion geometry for both diseases is drawn for every sample, healthy or not, so an
addition such as do(disease := effusion) on a healthy image has a defined answer; it is not identifiable from the
healthy image itself, which is why only removal has a pixel-exact target for a learned model.

Race and white-cell count have no direct effect on the image: wcc acts only through the disease, race not at all.
Image coordinates: x runs left to right across the image, y top to bottom, both in [-1, 1]; the patient's right is
on the image's left, as on a PA film.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F

from .graph import BINARY, CATEGORICAL, CONTINUOUS, DISEASE_CLASSES, GRAPHS, MIMIC_GRAPH, CausalGraph

HEALTHY, EFFUSION, PNEUMONIA = 0, 1, 2
LESIONS = {EFFUSION: "effusion", PNEUMONIA: "pneumonia"}

# Disease mechanism: log-odds of effusion and pneumonia against "healthy" (whose logit is 0).
# Older age raises effusion; a high white-cell count raises pneumonia. Chosen so that roughly 45% of the phantom
# population is healthy and the rest is split between the two diseases (balanced enough to learn from).
AGE_CENTRE, AGE_SCALE = 55.0, 18.0
WCC_LOG_MEDIAN, WCC_LOG_SD = math.log(8.0), 0.35
EFFUSION_BIAS, EFFUSION_PER_AGE_SD = -0.55, 1.1
PNEUMONIA_BIAS, PNEUMONIA_PER_LOG_WCC_SD = -0.75, 1.2
PNEUMONIA_BIAS_WITHOUT_WCC, PNEUMONIA_PER_AGE_SD_WITHOUT_WCC = -0.65, 0.3

# Only these parents reach the pixels; race and wcc do not.
IMAGE_PARENTS = ("age", "sex", "disease")

# A lesion pixel is one the lesion changes by more than this (in [0, 1] film brightness); below it the lesion is
# left out entirely, so a counterfactual differs from its factual image exactly inside the lesion masks.
LESION_THRESHOLD = 0.02
PNEUMONIA_TEXTURE_GRID = 16
# Small batches on one thread: every operation is a cheap element-wise pass, so staying in cache matters more than
# threads, and on a busy machine intra-op threads spin against each other (10x slower measured at 2 cores).
RENDER_BATCH = 32

# Pneumonia lobes: (patient side, lateral offset from the lung centre, height as a fraction from apex to dome).
# Side -1 is the patient's right (image left), +1 the patient's left.
LOBES = (
    ("right upper", -1, 0.02, 0.35),
    ("right middle", -1, -0.07, 0.70),
    ("right lower", -1, 0.07, 0.86),
    ("left upper", 1, 0.03, 0.35),
    ("left lower", 1, 0.08, 0.86),
)
EFFUSION_SIDES = ("right", "left", "bilateral")
# The exogenous noise of each lesion: invisible in an image without that lesion.
LESION_NOISE = {
    "effusion": ("effusion_side", "effusion_level", "effusion_meniscus"),
    "pneumonia": ("pneumonia_lobe", "pneumonia_offset", "pneumonia_extent", "pneumonia_texture"),
}


class Exogenous:
    """The exogenous noise of a batch: name -> tensor with samples on the first axis.

    `u["rib_phase"]` returns one noise tensor; `u[3]`, `u[2:5]` or `u[index_tensor]` returns the noise of those
    samples (indexing every tensor alike), so noise can be subset and stored together with its images.
    """

    def __init__(self, fields):
        self.fields = dict(fields)
        lengths = {len(v) for v in self.fields.values()}
        if len(lengths) > 1:
            raise ValueError(f"exogenous noise fields disagree on the number of samples: {sorted(lengths)}")

    def __getitem__(self, key):
        if isinstance(key, str):
            return self.fields[key]
        if isinstance(key, int):
            key = slice(key, key + 1) if key != -1 else slice(-1, None)
        elif isinstance(key, list | tuple | np.ndarray):
            key = torch.as_tensor(key, dtype=torch.long)
        return Exogenous({name: value[key] for name, value in self.fields.items()})

    def __len__(self):
        return len(next(iter(self.fields.values()))) if self.fields else 0

    def keys(self):
        return self.fields.keys()

    def items(self):
        return self.fields.items()

    @classmethod
    def cat(cls, parts):
        parts = list(parts)
        return cls({name: torch.cat([p.fields[name] for p in parts]) for name in parts[0].fields})

    def state_dict(self):
        return dict(self.fields)


def _rng(rng):
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _column(values):
    """[B] -> [B, 1, 1] float, so per-image parameters broadcast over the pixel grid."""
    return values.to(torch.float32).view(-1, 1, 1)


def _soft(signed_distance, width):
    """Anti-aliased inside-indicator: 1 well inside (positive distance), 0 well outside."""
    return torch.sigmoid(signed_distance / width)


def _ellipse_distance(x, y, cx, cy, ax, ay):
    """Approximate signed distance to an ellipse boundary (positive inside), in image units."""
    radius = torch.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 + 1e-12)
    return (1.0 - radius) * torch.minimum(torch.as_tensor(ax), torch.as_tensor(ay))


def _hash_uniform(seeds, count):
    """Deterministic uniform [0, 1) noise per (seed, index), vectorised: a 31-bit integer hash, no RNG state."""
    h = (seeds.view(-1, 1) * 1103515245 + torch.arange(count, dtype=torch.int64).view(1, -1) * 12345 + 1) & 0x7FFFFFFF
    for multiplier in (0x45D9F3B, 0x2C1B3C6D):
        h = ((h >> 15) ^ h) & 0x7FFFFFFF
        h = (h * multiplier) & 0x7FFFFFFF
    h = ((h >> 13) ^ h) & 0x7FFFFFFF
    return h.to(torch.float32) / float(0x80000000)


class PhantomSCM:
    """Sampler, renderer and exact counterfactual oracle of the phantom chest X-rays.

    `graph` is MIMIC_GRAPH (age, sex, race, wcc -> disease) or CHESTXRAY8_GRAPH (age, sex -> disease <- age);
    parent values follow the project's conventions (continuous in raw units, binary 0/1 float, categorical int64).
    """

    def __init__(self, graph: CausalGraph = MIMIC_GRAPH):
        if isinstance(graph, str):
            graph = GRAPHS[graph]
        self.graph = graph
        self.has_wcc = "wcc" in graph

    # ----------------------------------------------------------------------------------------------- the SCM
    def sample(self, n, rng=None):
        """Draw n patients and their exogenous noise: returns (pa, u)."""
        rng = _rng(rng)
        age = 18.0 + 72.0 * rng.beta(2.2, 2.0, n)
        pa = {
            "age": torch.tensor(age, dtype=torch.float32),
            "sex": torch.tensor(rng.random(n) < 0.5, dtype=torch.float32),
        }
        if "race" in self.graph:
            pa["race"] = torch.tensor(rng.choice(3, size=n, p=[0.65, 0.15, 0.20]), dtype=torch.int64)
        if self.has_wcc:
            wcc = np.exp(WCC_LOG_MEDIAN + WCC_LOG_SD * rng.standard_normal(n)).clip(2.0, 25.0)
            pa["wcc"] = torch.tensor(wcc, dtype=torch.float32)

        def uniform(*shape):
            return torch.tensor(rng.random((n, *shape)), dtype=torch.float32)

        def normal(*shape):
            return torch.tensor(rng.standard_normal((n, *shape)).clip(-2.5, 2.5), dtype=torch.float32)

        u = Exogenous(
            {
                "disease_gumbel": torch.tensor(rng.gumbel(size=(n, len(DISEASE_CLASSES))), dtype=torch.float32),
                "shift": normal(2),
                "thorax": normal(),
                "lung_height": normal(),
                "diaphragm": normal(2),
                "heart": normal(2),
                "breast": uniform(),
                "rib_phase": uniform(),
                "exposure": normal(2),
                "noise_seed": torch.tensor(rng.integers(0, 2**31 - 1, n), dtype=torch.int64),
                "effusion_side": torch.tensor(rng.choice(3, size=n, p=[0.4, 0.3, 0.3]), dtype=torch.int64),
                "effusion_level": uniform(),
                "effusion_meniscus": uniform(),
                "pneumonia_lobe": torch.tensor(rng.integers(0, len(LOBES), n), dtype=torch.int64),
                "pneumonia_offset": normal(2),
                "pneumonia_extent": uniform(),
                "pneumonia_texture": normal(2, PNEUMONIA_TEXTURE_GRID, PNEUMONIA_TEXTURE_GRID),
            }
        )
        pa["disease"] = self.disease_mechanism(pa, u)
        return pa, u

    def disease_logits(self, pa):
        """Log-odds [N, 3] of (healthy, effusion, pneumonia) given the disease node's parents."""
        age_z = (pa["age"].to(torch.float32) - AGE_CENTRE) / AGE_SCALE
        effusion = EFFUSION_BIAS + EFFUSION_PER_AGE_SD * age_z
        if self.has_wcc:
            wcc_z = (torch.log(pa["wcc"].to(torch.float32).clamp_min(1e-3)) - WCC_LOG_MEDIAN) / WCC_LOG_SD
            pneumonia = PNEUMONIA_BIAS + PNEUMONIA_PER_LOG_WCC_SD * wcc_z
        else:
            pneumonia = PNEUMONIA_BIAS_WITHOUT_WCC + PNEUMONIA_PER_AGE_SD_WITHOUT_WCC * age_z
        return torch.stack([torch.zeros_like(effusion), effusion, pneumonia], dim=1)

    def disease_probabilities(self, pa):
        return torch.softmax(self.disease_logits(pa), dim=1)

    def disease_mechanism(self, pa, u):
        """Gumbel-max: the same stored noise always gives the same disease for the same parents."""
        return torch.argmax(self.disease_logits(pa) + u["disease_gumbel"], dim=1).to(torch.int64)

    def intervene(self, pa, u, do):
        """Set the nodes in `do` and recompute their descendants with the SAME exogenous noise; returns pa_cf."""
        unknown = set(do) - set(self.graph.names)
        if unknown:
            raise ValueError(f"cannot intervene on {sorted(unknown)}: not in graph {self.graph.name!r}")
        n = len(pa["disease"])
        pa_cf = {name: value.clone() for name, value in pa.items()}
        changed = set()
        for node in self.graph.nodes:
            if node.name in do:
                pa_cf[node.name] = _intervention_values(node, do[node.name], n)
                changed.add(node.name)
            elif changed.intersection(node.parents):
                pa_cf[node.name] = self.disease_mechanism(pa_cf, u)
                changed.add(node.name)
        return pa_cf

    def true_counterfactual(self, pa, u, do, resolution):
        """The exact counterfactual: (x_cf, pa_cf, masks_cf) = render(intervene(pa, u, do), u)."""
        pa_cf = self.intervene(pa, u, do)
        x_cf, masks_cf = self.render(pa_cf, u, resolution)
        return x_cf, pa_cf, masks_cf

    def change_region(self, pa, u, pa_cf, resolution):
        """Pixels a true counterfactual changes: bool [N, 1, H, W].

        The union of the lesion masks of the factual and the counterfactual disease wherever the disease changes,
        plus, for samples whose anatomy parents (age, sex) change, every pixel whose lesion-free anatomy changes.
        """
        masks = self._render_batched(pa, u, resolution)[1]
        masks_cf = self._render_batched(pa_cf, u, resolution)[1]
        disease, disease_cf = pa["disease"], pa_cf["disease"]
        region = torch.zeros_like(masks["effusion"])
        moved = (disease != disease_cf).view(-1, 1, 1, 1)
        for label, name in LESIONS.items():
            region |= moved & (disease == label).view(-1, 1, 1, 1) & masks[name]
            region |= moved & (disease_cf == label).view(-1, 1, 1, 1) & masks_cf[name]
        anatomy_changed = torch.zeros(len(disease), dtype=torch.bool)
        for name in IMAGE_PARENTS:
            if name != "disease":
                anatomy_changed |= pa[name] != pa_cf[name]
        if anatomy_changed.any():
            index = torch.nonzero(anatomy_changed).flatten()
            healthy = torch.zeros(len(index), dtype=torch.int64)
            before = self.render({**_take(pa, index), "disease": healthy}, u[index], resolution)[0]
            after = self.render({**_take(pa_cf, index), "disease": healthy}, u[index], resolution)[0]
            region[index] |= before != after
        return region

    def plausible_zone(self, pa, u, disease, resolution, draws=64, rng=None):
        """Where a lesion of class `disease` could lie in these patients: bool [N, 1, H, W].

        The union of the lesion's masks over `draws` fresh draws of its own exogenous noise (effusion side, level
        and meniscus; pneumonia lobe, offset, extent and texture), the anatomy and everything else kept. An addition
        do(disease := k) to a healthy image cannot know which lesion the patient would have had, but a plausible one
        lies inside this zone.
        """
        if disease not in LESIONS:
            raise ValueError(f"plausible_zone needs a lesion class {sorted(LESIONS)}, got {disease!r}")
        name = LESIONS[disease]
        rng = _rng(rng)
        n = len(pa["disease"])
        zone = torch.zeros(n, 1, resolution, resolution, dtype=torch.bool)
        if n == 0:
            return zone
        for _ in range(draws):
            fresh = self.sample(n, rng)[1]
            fields = dict(u.fields)
            for key in LESION_NOISE[name]:
                fields[key] = fresh[key]
            zone |= self._render_batched(pa, Exogenous(fields), resolution)[1][name]
        return zone

    # ------------------------------------------------------------------------------------------- the image
    def render(self, pa, u, resolution):
        """Deterministic image mechanism: (x [N, 1, H, W] in [-1, 1], {"effusion": mask, "pneumonia": mask})."""
        return self._render_batched(pa, u, resolution)

    def _render_batched(self, pa, u, resolution):
        resolution = int(resolution)
        if not 8 <= resolution <= 1024:
            raise ValueError(f"phantom resolution must be between 8 and 1024 px, got {resolution}")
        n = len(pa["disease"])
        if n == 0:
            empty = torch.zeros(0, 1, resolution, resolution)
            return empty, {"effusion": empty.bool(), "pneumonia": empty.bool()}
        images, effusion_masks, pneumonia_masks = [], [], []
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for start in range(0, n, RENDER_BATCH):
                index = slice(start, min(start + RENDER_BATCH, n))
                x, masks = _render_batch({k: v[index] for k, v in pa.items()}, u[index], resolution)
                images.append(x)
                effusion_masks.append(masks["effusion"])
                pneumonia_masks.append(masks["pneumonia"])
        finally:
            torch.set_num_threads(threads)
        return torch.cat(images), {"effusion": torch.cat(effusion_masks), "pneumonia": torch.cat(pneumonia_masks)}


def _take(pa, index):
    return {name: value[index] for name, value in pa.items()}


def _intervention_values(node, value, n):
    dtype = torch.int64 if node.kind == CATEGORICAL else torch.float32
    values = torch.as_tensor(value).to(dtype)
    values = values.expand(n).clone() if values.dim() == 0 else values.reshape(-1)
    if len(values) != n:
        raise ValueError(f"do({node.name}) has {len(values)} values for {n} samples")
    if node.kind == CATEGORICAL and ((values < 0) | (values >= node.cardinality)).any():
        raise ValueError(f"do({node.name}) must be a category index in 0..{node.cardinality - 1}")
    if node.kind == BINARY and not torch.isin(values, torch.tensor([0.0, 1.0])).all():
        raise ValueError(f"do({node.name}) must be 0 or 1")
    if node.kind == CONTINUOUS and not torch.isfinite(values).all():
        raise ValueError(f"do({node.name}) must be finite")
    return values


def _render_batch(pa, u, resolution):
    """Render one batch. All geometry is in image units ([-1, 1]), so any resolution draws the same patient."""
    pixel = 2.0 / resolution
    edge = 0.5 * pixel + 0.01
    coords = (torch.arange(resolution, dtype=torch.float32) + 0.5) * pixel - 1.0
    shift = u["shift"]
    x = coords.view(1, 1, -1) - 0.03 * _column(shift[:, 0])
    y = coords.view(1, -1, 1) - 0.03 * _column(shift[:, 1])

    age = ((_column(pa["age"]) - 18.0) / 72.0).clamp(0.0, 1.0)
    male = _column(pa["sex"])
    bone = (0.20 - 0.08 * age) * (1.0 + 0.12 * male)  # bone contrast falls with age (osteopenia)

    thorax = (0.74 + 0.07 * male + 0.02 * age) * (1.0 + 0.035 * _column(u["thorax"]))
    apex = -0.80 + 0.03 * _column(u["lung_height"])
    diaphragm = u["diaphragm"]
    dome_right = 0.38 + 0.06 * age + 0.03 * _column(diaphragm[:, 0])  # older lungs: flatter, lower domes
    dome_left = dome_right + 0.05 + 0.015 * _column(diaphragm[:, 1])

    # Body: a rounded trunk of soft tissue; edges look brighter where the chest wall is seen tangentially.
    trunk_x = (x.abs() / (thorax + 0.11)) ** 4 + ((y - 0.25) / 1.35).abs() ** 4
    body = _soft((1.0 - trunk_x) * 0.12, edge)
    brightness = 0.04 + body * (0.38 + 0.12 * (x.abs() / (thorax + 0.11)).clamp(max=1.0) ** 2)

    # Lungs: an ellipse per side, cut from below by its diaphragm dome. The dome peaks medially and falls to the
    # lateral chest wall, which meets it at a sharp costophrenic angle.
    lung_centre = 0.07 + 0.5 * (thorax - 0.08 - 0.07)
    lung_half_width = 0.5 * (thorax - 0.08 - 0.07) + 0.05
    lung_half_height = 0.72 * (1.0 + 0.03 * _column(u["lung_height"]))
    lung_centre_y = apex + lung_half_height
    sides = {}
    for side, dome_top in ((-1, dome_right), (1, dome_left)):
        lateral = side * x
        dome = dome_top + 1.3 * (lateral - (lung_centre - 0.06)) ** 2
        envelope = _soft(
            _ellipse_distance(lateral, y, lung_centre, lung_centre_y, lung_half_width, lung_half_height), edge
        )
        lung = envelope * _soft(dome - y, edge)
        sides[side] = {"lateral": lateral, "dome": dome, "dome_top": dome_top, "envelope": envelope, "lung": lung}
    lungs = torch.maximum(sides[-1]["lung"], sides[1]["lung"])
    hilum = torch.exp(-(((x.abs() - 0.2) ** 2) / 0.05 + ((y - 0.0) ** 2) / 0.10))
    lung_brightness = 0.13 + 0.10 * hilum + 0.05 * ((y - apex) / 1.4).clamp(0.0, 1.0)
    brightness = brightness * (1.0 - lungs) + lung_brightness * lungs

    # Below the domes: liver and spleen, denser than the chest wall.
    abdomen = _soft(y - sides[-1]["dome"], edge) * (x <= 0) + _soft(y - sides[1]["dome"], edge) * (x > 0)
    brightness = brightness + 0.10 * abdomen * body
    bubble = _soft(_ellipse_distance(x, y, 0.30, dome_left + 0.11, 0.085, 0.045), edge)
    brightness = brightness - 0.16 * bubble

    # Breast shadows over the lower lung zones of female patients.
    breast_size = (1.0 - male) * (0.6 + 0.4 * _column(u["breast"]))
    breasts = _soft(_ellipse_distance(x.abs(), y, 0.47, dome_right + 0.02, 0.30, 0.20), 0.08)
    brightness = brightness + 0.09 * breast_size * breasts * body

    # Heart and mediastinum: the heart sits left of the midline (image right) and grows with age.
    heart_jitter = u["heart"]
    heart_half_width = (0.30 + 0.10 * age + 0.02 * male) * (1.0 + 0.05 * _column(heart_jitter[:, 0]))
    heart_x = 0.11 + 0.02 * _column(heart_jitter[:, 1])
    heart = _soft(_ellipse_distance(x, y, heart_x, dome_left - 0.08, heart_half_width, 0.27), edge)
    mediastinum = _soft(0.10 + 0.015 * male - (x - 0.02).abs(), edge) * _soft(0.25 - y, edge)
    aortic_knob = _soft(_ellipse_distance(x, y, 0.12, -0.30, 0.06 + 0.02 * age, 0.06), edge)
    central = torch.maximum(torch.maximum(heart, mediastinum), aortic_knob)
    brightness = brightness * (1.0 - central) + 0.68 * central
    trachea = _soft(0.028 - (x - 0.01).abs(), 0.5 * edge) * _soft(-0.28 - y, edge)
    brightness = brightness - 0.22 * trachea

    # Bones: spine behind the mediastinum, posterior ribs (curving down laterally), fainter anterior ribs, clavicles.
    spine = _soft(0.065 - x.abs(), edge) * (0.6 + 0.4 * torch.cos(math.pi * y / 0.11) ** 2)
    below_domes = torch.where(x < 0, sides[-1]["dome"], sides[1]["dome"])
    in_chest = body * _soft(thorax - x.abs(), edge) * _soft(below_domes + 0.03 - y, 0.04)
    phase = _column(u["rib_phase"])
    posterior = (0.5 + 0.5 * torch.cos(2 * math.pi * ((y - 0.55 * (x.abs() - 0.05) ** 2) / 0.155 + phase))) ** 3
    anterior = (0.5 + 0.5 * torch.cos(2 * math.pi * ((y + 0.45 * (x.abs() - 0.15) ** 2) / 0.19 + 0.5 * phase))) ** 4
    ribs = in_chest * _soft(y + 0.88, edge) * (1.0 - 0.7 * central) * (posterior + 0.35 * anterior)
    clavicle_y = -0.71 - 0.17 * (x.abs() - 0.08) + 0.2 * (x.abs() - 0.35) ** 2
    clavicles = _soft(0.035 - (y - clavicle_y).abs(), 0.5 * edge) * _soft(x.abs() - 0.07, edge)
    clavicles = clavicles * _soft(0.64 - x.abs(), edge)
    brightness = brightness + bone * (0.35 * spine * body + 0.45 * ribs + 1.1 * clavicles)

    # Lesions. Both are computed for every image so that their masks (where they are or would be) are known.
    effusion_image = _add_effusion(brightness, y, u, sides, central, lung_centre, lung_half_width, apex, edge)
    pneumonia_image = _add_pneumonia(brightness, x, y, u, sides, central, lung_centre, apex, edge, resolution)
    effusion_mask = (effusion_image - brightness).abs() > LESION_THRESHOLD
    pneumonia_mask = (pneumonia_image - brightness).abs() > LESION_THRESHOLD
    disease = pa["disease"].view(-1, 1, 1)
    brightness = torch.where((disease == EFFUSION) & effusion_mask, effusion_image, brightness)
    brightness = torch.where((disease == PNEUMONIA) & pneumonia_mask, pneumonia_image, brightness)

    # Film: exposure jitter, a smooth exposure gradient, and grain that is fixed per image (hashed from a seed).
    exposure = u["exposure"]
    brightness = brightness * (1.0 + 0.05 * _column(exposure[:, 0])) + 0.02 * _column(exposure[:, 1])
    brightness = brightness + 0.02 * y
    grain = _hash_uniform(u["noise_seed"], resolution * resolution).view(-1, resolution, resolution)
    brightness = brightness + 0.035 * (grain - 0.5)
    x_image = (brightness.clamp(0.0, 1.0) * 2.0 - 1.0).unsqueeze(1)
    return x_image, {"effusion": effusion_mask.unsqueeze(1), "pneumonia": pneumonia_mask.unsqueeze(1)}


def _add_effusion(brightness, y, u, sides, central, lung_centre, lung_half_width, apex, edge):
    """Pleural fluid: a dense basal opacity whose upper border (meniscus) climbs along the lateral chest wall,
    filling the costophrenic angle and hiding the dome. Right, left or both sides; the second side is smaller."""
    side_choice = u["effusion_side"].view(-1, 1, 1)
    level = _column(u["effusion_level"])
    meniscus = 0.14 + 0.16 * _column(u["effusion_meniscus"])
    image = brightness
    edge = 0.5 * edge  # pleural fluid has a sharp meniscus
    for side, present, scale in ((-1, side_choice != 1, 1.0), (1, side_choice != 0, 0.75)):
        scale = torch.where(side_choice == 2, torch.full_like(level, scale), torch.ones_like(level))
        geometry = sides[side]
        height = geometry["dome_top"] - apex
        top = geometry["dome_top"] - height * (0.08 + 0.17 * level) * scale
        medial = lung_centre - lung_half_width
        across = ((geometry["lateral"] - medial) / (2 * lung_half_width)).clamp(0.0, 1.0)
        surface = top - meniscus * scale * across**1.6
        fluid = geometry["envelope"] * _soft(y - surface, edge) * _soft(geometry["dome"] + 0.02 - y, edge)
        fluid = fluid * (1.0 - central) * present
        density = 0.60 + 0.08 * ((y - top) / 0.3).clamp(0.0, 1.0)
        image = image * (1.0 - fluid) + density * fluid
    return image


def _add_pneumonia(brightness, x, y, u, sides, central, lung_centre, apex, edge, resolution):
    """Airspace consolidation: a textured, irregular patch confined to one lobe's part of the lung field."""
    texture = F.interpolate(u["pneumonia_texture"], size=(resolution, resolution), mode="bicubic", align_corners=False)
    boundary_texture, patch_texture = texture[:, 0], texture[:, 1]
    lobe = u["pneumonia_lobe"]
    lobe_side = torch.tensor([s for _, s, _, _ in LOBES], dtype=torch.float32)[lobe]
    lobe_lateral = torch.tensor([dx for _, _, dx, _ in LOBES], dtype=torch.float32)[lobe]
    lobe_height = torch.tensor([h for _, _, _, h in LOBES], dtype=torch.float32)[lobe]
    side = _column(lobe_side)
    dome_top = torch.where(side < 0, sides[-1]["dome_top"], sides[1]["dome_top"])
    offset = u["pneumonia_offset"]
    centre_lateral = lung_centre + _column(lobe_lateral) + 0.04 * _column(offset[:, 0])
    centre_y = apex + (dome_top - apex) * _column(lobe_height) + 0.04 * _column(offset[:, 1])
    extent = _column(u["pneumonia_extent"])
    radius_x, radius_y = 0.18 + 0.10 * extent, 0.18 + 0.12 * extent
    lateral = side * x
    radius = ((lateral - centre_lateral) / radius_x) ** 2 + ((y - centre_y) / radius_y) ** 2
    patch = _soft(1.0 - radius + 0.45 * boundary_texture, 0.22)
    patchiness = 0.45 + 0.55 * torch.sigmoid(3.0 * patch_texture)
    lung = torch.where(side < 0, sides[-1]["lung"], sides[1]["lung"]) * (1.0 - central)
    opacity = lung * patch * patchiness
    density = 0.55 + 0.05 * patch_texture.clamp(-2.0, 2.0)
    return brightness * (1.0 - opacity) + density * opacity

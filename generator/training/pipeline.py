"""Training a deep structural causal model end to end: parents -> predictors -> hvae -> counterfactual.

Each stage is checkpointed atomically to `<out_dir>/<stage>.pt` and recorded in `<out_dir>/run.json` once complete;
an interrupted stage resumes from `<stage>.partial.pt`. Every checkpoint carries the run configuration, the preset
snapshot, the seed, the graph and the code version.

A run's hyperparameters are its preset snapshot: a `Preset` taken from the registry once, when the run is created,
and passed to `train` beside the `RunConfig`. Training, resuming and loading read that snapshot (the one stored with
the run, the one in a checkpoint) and never look a preset up by name again, so editing or removing a registry entry
changes no run that already exists.

    splits = generator.data.make_phantom_splits(4000, 64, seed=0)
    summary = train(RunConfig(preset="cpu-64", time_budget_s=900), get_preset("cpu-64"), splits, Path("var/runs/demo"))
    model = load_model(summary["checkpoint"])
"""

import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from generator.causal.counterfactual import CounterfactualModel
from generator.causal.predictors import ParentPredictors
from generator.data.graph import CONTINUOUS, CausalGraph
from generator.training.budget import under_trained_stages
from generator.training.checkpoint import (
    MANIFEST,
    atomic_save,
    code_version,
    load_checkpoint,
    read_manifest,
    record_stage,
)
from generator.training.counterfactual_stage import (
    AddedLesionCritic,
    AnatomyCritic,
    CounterfactualTask,
    addition_intervention,
    finetune_counterfactual,
    measure_free_energy,
)
from generator.training.critics import LatentAdversary
from generator.training.presets import Preset, require_same_snapshot
from generator.training.selection import select_final
from generator.training.trainer import (
    EMA,
    BatchSampler,
    StageTask,
    augment,
    choose_device,
    clipped_step,
    run_stage,
    take,
    validate_dataset,
    world,
)

STAGES = ("parents", "predictors", "hvae", "counterfactual")
VARIANTS = ("baseline", "expert", "expert-al")

__all__ = ["RunConfig", "STAGES", "train", "finetune_counterfactual", "load_model", "load_predictors"]


@dataclass
class RunConfig:
    """What a run does besides its hyperparameters, which are its preset snapshot (passed to `train` beside this)."""

    preset: str = "cpu-64"  # the registry entry the run's snapshot was taken from; a label once the run exists
    variant: str = "baseline"
    seed: int = 0
    steps: dict = field(default_factory=dict)  # stage -> steps; a missing stage uses the preset's default
    time_budget_s: float | None = None  # wall clock for all stages, shared by the preset's budget_shares
    # expert constraint alpha * log(1 + beta * |p(x) - p(x_cf)|) >= d of the proposed model
    expert_alpha: float = 1.0
    expert_beta: float = 10.0
    expert_threshold: float = 0.5
    # active learning: rounds, and the share of the training set added per round
    al_rounds: int = 3
    al_fraction: float = 0.1

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        unknown = set(self.steps or {}) - set(STAGES)
        if unknown:
            raise ValueError(f"unknown stages in steps: {sorted(unknown)}; stages are {STAGES}")
        self.steps = {k: v for k, v in (self.steps or {}).items() if v is not None}

    def stage_steps(self, preset, stage):
        return int(self.steps.get(stage, preset.steps[stage]))

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, data):
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# --- stage tasks ----------------------------------------------------------------------------------------------------


class ParentsTask(StageTask):
    """Maximum likelihood of the parent model on the training parents."""

    name = "parents"

    def __init__(self, parent_model, preset, train_set, valid_set, seed, device):
        self.parent_model = parent_model
        self.train_set, self.valid_set, self.device = train_set, valid_set, device
        self.optimizer = torch.optim.Adam(parent_model.parameters(), lr=preset.parents_lr)
        self.sampler = BatchSampler(len(train_set.x), preset.parents_batch_size, seed)

    def step(self, step):
        index = self.sampler.next()
        pa = {name: values[index].to(self.device) for name, values in self.train_set.pa.items()}
        loss = self.parent_model.nll(pa)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"nll": loss.item()}

    def state_dict(self):
        return {
            "parents": self.parent_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "sampler": self.sampler.state_dict(),
        }

    def load_state_dict(self, state):
        self.parent_model.load_state_dict(state["parents"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.sampler.load_state_dict(state["sampler"])

    @torch.no_grad()
    def evaluate(self):
        pa = {name: values.to(self.device) for name, values in self.valid_set.pa.items()}
        return {"valid_nll": self.parent_model.nll(pa).item()}


class PredictorsTask(StageTask):
    """Anti-causal predictors q(pa_k | x) on augmented real images.

    The learning rate falls from `predictor_lr` to zero along a cosine over the planned `steps`. At a constant rate the
    small batches and batch normalisation leave the end of the stage at the mercy of its last few steps: on phantoms
    (`cpu-64`, 800 steps) the disease accuracy on validation swung between 0.65 and 0.99 within the last five steps,
    and counterfactual training then learned to convince a judge that was barely better than the class frequencies.
    """

    name = "predictors"

    def __init__(self, predictors, preset, train_set, valid_set, seed, device, steps=None):
        self.predictors, self.preset = predictors, preset
        self.train_set, self.valid_set, self.device = train_set, valid_set, device
        self.steps = steps
        self.optimizer = torch.optim.AdamW(predictors.parameters(), lr=preset.predictor_lr, weight_decay=1e-4)
        self.sampler = BatchSampler(len(train_set.x), preset.batch_size, seed)

    def learning_rate(self, step):
        if not self.steps:
            return self.preset.predictor_lr
        return self.preset.predictor_lr * 0.5 * (1 + math.cos(math.pi * min(step, self.steps) / self.steps))

    def step(self, step):
        lr = self.learning_rate(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x, pa = take(self.train_set, self.sampler.next(), self.device)
        loss = self.predictors.loss(augment(x, self.preset), pa)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": loss.item(), "lr": lr}

    def state_dict(self):
        return {
            "predictors": self.predictors.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "sampler": self.sampler.state_dict(),
        }

    def load_state_dict(self, state):
        self.predictors.load_state_dict(state["predictors"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.sampler.load_state_dict(state["sampler"])

    def evaluate(self):
        return evaluate_predictors(self.predictors, self.valid_set, self.device)


@torch.no_grad()
def evaluate_predictors(predictors, dataset, device, batch_size=256):
    """Validation accuracy (discrete parents) and mean absolute error in raw units (continuous parents)."""
    predictors.eval()
    sums = {}
    n = len(dataset.x)
    for start in range(0, n, batch_size):
        x, pa = take(dataset, torch.arange(start, min(start + batch_size, n)), device)
        predicted = predictors.predict(x)
        for node in predictors.graph.nodes:
            if node.kind == CONTINUOUS:
                key, value = f"{node.name}_mae", (predicted[node.name] - pa[node.name]).abs().sum()
            else:
                key, value = f"{node.name}_accuracy", (predicted[node.name].argmax(-1) == pa[node.name].long()).sum()
            sums[key] = sums.get(key, 0.0) + value.item()
    predictors.train()
    metrics = {k: v / n for k, v in sums.items()}
    for node in predictors.graph.nodes:
        values = dataset.pa[node.name]
        if node.kind == CONTINUOUS:
            metrics[f"{node.name}_baseline_mae"] = (values - values.float().mean()).abs().mean().item()
        else:
            metrics[f"{node.name}_baseline_accuracy"] = torch.bincount(values.long()).max().item() / n
    return metrics


def readable_parents(graph, metrics, margin=0.05):
    """Parents the predictors read from real images clearly better than a constant guess.

    Only these are intervened on in counterfactual training: a predictor that cannot see a parent in real images
    gives no signal about how it looks, and asking the generator to satisfy it anyway teaches shortcuts.
    """
    readable = []
    for node in graph.nodes:
        if node.kind == CONTINUOUS:
            if metrics[f"{node.name}_mae"] < (1 - 4 * margin) * metrics[f"{node.name}_baseline_mae"]:
                readable.append(node.name)
        elif metrics[f"{node.name}_accuracy"] > metrics[f"{node.name}_baseline_accuracy"] + margin:
            readable.append(node.name)
    return readable


class HVAETask(StageTask):
    """ELBO training of the conditional HVAE, with the latent-independence adversary and, with a lesion branch, the
    anatomy adversary."""

    name = "hvae"

    def __init__(self, hvae, preset, graph, train_set, valid_set, seed, device):
        self.hvae, self.preset = hvae, preset
        self.train_set, self.valid_set, self.device = train_set, valid_set, device
        self.adversary = LatentAdversary(preset, graph).to(device)
        self.anatomy = AnatomyCritic(preset, graph, device)
        self.added_lesions = AddedLesionCritic(
            preset, graph, device, weight=preset.elbo_lesion_critic_weight if hvae.lesion_latent_dim else 0.0
        )
        self.optimizer = torch.optim.AdamW(
            hvae.parameters(), lr=preset.lr, betas=preset.betas, weight_decay=preset.weight_decay
        )
        self.adversary_optimizer = torch.optim.Adam(self.adversary.parameters(), lr=preset.adversary_lr)
        self.ema = EMA(hvae, preset.ema_rate)
        self.sampler = BatchSampler(len(train_set.x), preset.batch_size, seed)

    def step(self, step):
        x, pa = take(self.train_set, self.sampler.next(), self.device)
        x = augment(x, self.preset)
        out = self.hvae.elbo(x, pa)
        free_energy = out["free_energy"].mean()
        confusion = self.adversary.confusion(out["latents"], pa)
        anatomy_confusion = self.anatomy.confusion(out, pa)
        added = self.prior_additions(out, pa)
        realism = self.added_lesions.realism(out["lesion"], pa, *added) if added else torch.zeros((), device=x.device)
        (
            out["objective"].mean()
            + self.preset.independence_weight * confusion
            + self.preset.anatomy_weight * anatomy_confusion
            + self.preset.elbo_lesion_critic_weight * realism
        ).backward()
        norm, applied = clipped_step(self.optimizer, self.hvae.parameters(), self.preset, step, self.preset.lr)

        self.adversary.zero_grad(set_to_none=True)
        adversary_loss = self.adversary.loss([z.detach() for z in out["latents"]], pa)
        adversary_loss.backward()
        self.adversary_optimizer.step()
        self.adversary_optimizer.zero_grad(set_to_none=True)
        anatomy_adversary_loss = self.anatomy.train_step(out, pa)
        critic_loss = self.added_lesions.train_step(out["lesion"], pa, *added) if added else 0.0
        if applied:
            self.ema.update(self.hvae)
        return {
            "free_energy": free_energy.item(),
            "nll": out["nll"].mean().item(),
            "kl": out["kl"].mean().item(),
            "lesion_kl": out["lesion_kl"].mean().item(),
            "confusion": confusion.item(),
            "adversary": adversary_loss.item(),
            "anatomy_confusion": anatomy_confusion.item(),
            "anatomy_adversary": anatomy_adversary_loss,
            **({"added_realism": realism.item(), "lesion_critic": critic_loss} if self.added_lesions.active else {}),
            "grad_norm": norm,
            "skipped": float(not applied),
        }

    def state_dict(self):
        return {
            "hvae": self.hvae.state_dict(),
            "hvae_ema": self.ema.module.state_dict(),
            "adversary": self.adversary.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "adversary_optimizer": self.adversary_optimizer.state_dict(),
            "anatomy": self.anatomy.state_dict(),
            "lesion_critic": self.added_lesions.state_dict(),
            "sampler": self.sampler.state_dict(),
        }

    def load_state_dict(self, state):
        self.hvae.load_state_dict(state["hvae"])
        self.ema.module.load_state_dict(state["hvae_ema"])
        self.adversary.load_state_dict(state["adversary"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.adversary_optimizer.load_state_dict(state["adversary_optimizer"])
        self.anatomy.load_state_dict(state.get("anatomy", {}))
        self.added_lesions.load_state_dict(state.get("lesion_critic", {}))
        self.sampler.load_state_dict(state["sampler"])

    def prior_additions(self, out, pa):
        """(maps, parents) under an addition to every healthy image of the batch: a random disease class and a lesion
        code drawn from the prior, on the trunk's output for that image (no gradient into the trunk); None when the
        critic is off. Diseased images keep their own maps and parents, which the critic does not judge as added."""
        if not self.added_lesions.active:
            return None
        node = self.preset.lesion_node
        pa_cf = {**pa, **addition_intervention(pa, node, self.hvae.lesion_classes + 1)}
        abduction = out["abduction"]
        codes = self.hvae.prior_lesion_latents(len(pa[node]), abduction.features.device)
        maps = self.hvae.lesion(abduction.features.detach(), pa_cf, codes, abduction.anatomy.detach())
        return maps, pa_cf

    def evaluate(self):
        return {"valid_free_energy": measure_free_energy(self.ema.module, self.valid_set, self.preset, self.device)}


# --- the pipeline ---------------------------------------------------------------------------------------------------


def train(config, preset, splits, out_dir, progress=None, resume=False, extra_loss=None):
    """Run (or resume) every stage with the run's preset snapshot; returns the metrics, loss histories and checkpoint
    paths.

    Resuming refuses a run folder whose manifest or checkpoints were written with another snapshot than `preset`.
    """
    out_dir = Path(out_dir)
    if preset.name != config.preset:
        raise ValueError(f"the run configuration names preset {config.preset!r}, the snapshot is of {preset.name!r}")
    for name in ("train", "valid"):
        if name not in splits:
            raise KeyError(f"splits must contain {name!r}; got {sorted(splits)}")
    graph = splits["train"].graph
    for name, dataset in splits.items():
        validate_dataset(name, dataset, graph, preset.resolution)

    device = choose_device()
    rank, _ = world()
    meta = {
        "config": config.to_dict(),
        "preset": preset.to_dict(),
        "seed": config.seed,
        "code_version": code_version(),
        "graph": graph.to_dict(),
    }
    manifest = read_manifest(out_dir) if resume else {"stages": {}}
    require_same_snapshot(meta["preset"], manifest.get("preset"), out_dir / MANIFEST)
    train_set, valid_set = splits["train"], splits["valid"]

    torch.manual_seed(config.seed)
    model = CounterfactualModel(graph, preset).to(device)
    predictors = ParentPredictors(graph, preset.resolution, preset.predictor_width).to(device)
    summary = {"stages": {}, "history": {}, "checkpoints": {}, "out_dir": str(out_dir)}
    remaining_budget = config.time_budget_s
    carried = {}

    for index, stage in enumerate(STAGES):
        final_path = out_dir / f"{stage}.pt"
        partial_path = out_dir / f"{stage}.partial.pt"
        stage_seed = config.seed * 1000 + index
        recorded = manifest["stages"].get(stage)
        if resume and recorded and final_path.is_file():
            state = load_checkpoint(final_path)
            require_same_snapshot(meta["preset"], state["meta"]["preset"], final_path)
            restore_stage(stage, state, model, predictors, carried, device)
            if stage == "hvae":
                carried["valid_free_energy"] = recorded["metrics"]["valid_free_energy"]
            summary["stages"][stage] = recorded["metrics"]
            summary["history"][stage] = state.get("history", [])
            summary["checkpoints"][stage] = str(final_path)
            continue

        torch.manual_seed(stage_seed)
        if stage == "parents":
            model.parent_model.fit_standardisation(train_set.pa)
            task = ParentsTask(model.parent_model, preset, train_set, valid_set, stage_seed, device)
        elif stage == "predictors":
            steps = config.stage_steps(preset, stage)
            task = PredictorsTask(predictors, preset, train_set, valid_set, stage_seed, device, steps=steps)
        elif stage == "hvae":
            task = HVAETask(model.hvae, preset, graph, train_set, valid_set, stage_seed, device)
        else:
            model.hvae.load_state_dict(carried["hvae_ema"])
            constraint = carried["valid_free_energy"] * (1 + preset.constraint_slack)
            targets = readable_parents(graph, summary["stages"]["predictors"]) or list(graph.names)
            task = CounterfactualTask(
                model,
                predictors,
                preset,
                train_set,
                constraint,
                stage_seed,
                device,
                carried["adversary"],
                extra_loss,
                targets,
                carried.get("anatomy"),
            )

        budget = None
        if remaining_budget is not None:
            later = sum(preset.budget_shares[s] for s in STAGES[index:])
            budget = remaining_budget * preset.budget_shares[stage] / later
        started = time.monotonic()
        stage_meta = {**meta, "stage": stage}
        metrics, history, done = run_stage(
            task,
            config.stage_steps(preset, stage),
            partial_path=partial_path,
            meta=stage_meta,
            progress=progress,
            time_budget=budget,
            resume=resume,
            checkpoint_every=preset.checkpoint_every,
        )
        if remaining_budget is not None:
            remaining_budget = max(0.0, remaining_budget - (time.monotonic() - started))
        metrics = {**metrics, "steps": done, "planned_steps": config.stage_steps(preset, stage)}

        payload = stage_payload(stage, task, model, predictors)
        if stage == "hvae":
            carried.update(hvae_ema=task.ema.module.state_dict(), valid_free_energy=metrics["valid_free_energy"])
            carried["adversary"] = task.adversary
            carried["anatomy"] = task.anatomy
        if stage == "counterfactual":
            metrics.update(constraint=task.constraint, lagrange=float(task.lagrange), intervened=task.targets)
            model.hvae.load_state_dict(task.ema.module.state_dict())
            model.hvae.requires_grad_(True)
            metrics["valid_free_energy"] = measure_free_energy(model.hvae, valid_set, preset, device)
        if rank == 0:
            atomic_save(
                {**payload, "history": history, "meta": {**stage_meta, "step": done, "complete": True}}, final_path
            )
            record_stage(out_dir, stage, final_path, metrics, {**meta, "step": done})
            partial_path.unlink(missing_ok=True)
        summary["stages"][stage] = metrics
        summary["history"][stage] = history
        summary["checkpoints"][stage] = str(final_path)
        if progress is not None:
            progress(stage, 1.0, f"{stage} complete: " + describe(metrics))

    summary["checkpoint"] = summary["checkpoints"]["counterfactual"]
    if preset.select_final and preset.lesion_node in graph.names:
        final, scores = choose_final_checkpoint(summary["checkpoints"], valid_set, preset, config.seed, device)
        summary["checkpoint"] = summary["checkpoints"][final]
        summary["selection"] = {"final": final, "scores": scores}
        if progress is not None:
            progress("selection", 1.0, f"final model: {final} (" + describe(scores[final]) + ")")
    summary["under_trained"] = under_trained_stages(summary["stages"])
    summary["machine"] = machine_note()
    return summary


def machine_note():
    """Threads and load while training (throughput and budget cuts only make sense with them), and the processor and
    the instruction set torch's CPU kernels use: one-thread runs repeat bit for bit on one machine, so two runs of the
    same code and seed that differ can be traced to the machines they ran on."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (None, None, None)
    return {
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_average": [None if v is None else round(v, 2) for v in load],
        "cpu_model": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def cpu_model():
    """The processor's name from /proc/cpuinfo (Linux), else what the platform module reports."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def choose_final_checkpoint(checkpoints, valid_set, preset, seed, device):
    """The stage ("hvae" or "counterfactual") whose model makes the better validation counterfactuals."""
    candidates = {stage: load_model(checkpoints[stage], device=device) for stage in ("hvae", "counterfactual")}
    return select_final(candidates, valid_set, preset.lesion_node, seed=seed)


def describe(metrics):
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, int | float) else f"{k} {v}" for k, v in metrics.items())


def stage_payload(stage, task, model, predictors):
    payload = {"task": task.state_dict(), "parents": model.parent_model.state_dict()}
    if stage in ("predictors", "counterfactual"):
        payload["predictors"] = predictors.state_dict()
    if stage in ("hvae", "counterfactual"):
        payload["hvae"] = task.hvae.state_dict()
        payload["hvae_ema"] = task.ema.module.state_dict()
        payload["adversary"] = task.adversary.state_dict()
    return payload


def restore_stage(stage, state, model, predictors, carried, device):
    """Load a completed stage's results back into the in-memory objects (resume skips finished stages)."""
    model.parent_model.load_state_dict(state["parents"])
    if "predictors" in state:
        predictors.load_state_dict(state["predictors"])
    if stage == "hvae":
        preset = Preset.from_dict(state["meta"]["preset"])
        adversary = LatentAdversary(preset, model.graph).to(device)
        adversary.load_state_dict(state["adversary"])
        anatomy = AnatomyCritic(preset, model.graph, device)
        anatomy.load_state_dict(state["task"].get("anatomy", {}))
        model.hvae.load_state_dict(state["hvae"])
        carried.update(hvae_ema=state["hvae_ema"], adversary=adversary, anatomy=anatomy)
    if stage == "counterfactual":
        model.hvae.load_state_dict(state["hvae_ema"])


# --- loading trained models -----------------------------------------------------------------------------------------


def resolve_checkpoint(path):
    path = Path(path)
    if path.is_dir():
        for stage in ("counterfactual", "hvae"):
            if (path / f"{stage}.pt").is_file():
                return path / f"{stage}.pt"
        raise FileNotFoundError(f"{path} holds no completed hvae or counterfactual checkpoint")
    return path


def load_model(checkpoint_path, device=None):
    """The counterfactual model of a run (EMA weights of the HVAE), in eval mode."""
    state = load_checkpoint(resolve_checkpoint(checkpoint_path))
    meta = state["meta"]
    if "hvae_ema" not in state:
        raise ValueError(f"{checkpoint_path} is a {meta.get('stage')} checkpoint; it holds no image model")
    graph = CausalGraph.from_dict(meta["graph"])
    model = CounterfactualModel(graph, Preset.from_dict(meta["preset"]))
    model.parent_model.load_state_dict(state["parents"])
    model.hvae.load_state_dict(state["hvae_ema"])
    model.meta = meta
    return model.to(device or choose_device()).eval()


def load_predictors(checkpoint_path, device=None):
    """The anti-causal parent predictors of a run (from predictors.pt or the counterfactual checkpoint)."""
    path = Path(checkpoint_path)
    if path.is_dir():
        path = path / "predictors.pt"
    state = load_checkpoint(path)
    if "predictors" not in state:
        raise ValueError(f"{path} holds no parent predictors")
    meta = state["meta"]
    preset = Preset.from_dict(meta["preset"])
    predictors = ParentPredictors(CausalGraph.from_dict(meta["graph"]), preset.resolution, preset.predictor_width)
    predictors.load_state_dict(state["predictors"])
    return predictors.to(device or choose_device()).eval()

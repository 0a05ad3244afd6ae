"""The training loop shared by every stage: batches, augmentation, EMA, clipping, checkpoints and exact resume.

A stage is a `StageTask`: it owns its modules and optimisers, does one optimisation step on a batch, and turns its
state into a dict and back. `run_stage` drives it for a number of steps (or until a wall-clock budget runs out),
saving a resumable `<stage>.partial.pt` every `checkpoint_every` steps with the RNG states, the batch sampler, the
optimisers and the EMA, so a resumed run continues bit-identically.

Data parallel training (torchrun): every process draws the same permutation and takes its own slice of each batch;
gradients are averaged with an all-reduce before the optimiser step; only rank 0 writes files. With one process
(the default, and on CPU) none of this is active.
"""

import copy
import math
import os
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from generator.data.graph import BINARY, CONTINUOUS
from generator.training.checkpoint import atomic_save, capture_rng, load_checkpoint, restore_rng
from generator.training.presets import require_same_snapshot


class DatasetError(ValueError):
    """A training set that cannot be used; the message names the split, the field and the first bad row."""


def choose_device():
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        return torch.device(f"cuda:{local_rank}")
    return torch.device("cpu")


def free_cores(interval=1.0):
    """Cores not busy with other work, at least one.

    Measured over `interval` seconds from the kernel's CPU counters, less this process's own CPU time, so a process
    that has just finished training (the demo trains its two models one after the other) does not count itself as
    other work; the one-minute load average would still show it for minutes and halve the next run's threads. Where
    the counters cannot be read (not Linux), the CPU count minus the one-minute load average.
    """
    cpus = os.cpu_count() or 1
    busy = busy_cores_of_others(interval)
    if busy is None:
        busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(cpus, int(cpus - busy + 0.5)))


def busy_cores_of_others(interval=1.0, stat="/proc/stat"):
    """How many cores other processes kept busy during the next `interval` seconds (None without /proc/stat)."""

    def busy_seconds():
        with open(stat) as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle and iowait
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    try:
        busy_before, own_before, wall_before = busy_seconds(), time.process_time(), time.monotonic()
        time.sleep(interval)
        busy_after, own_after, wall_after = busy_seconds(), time.process_time(), time.monotonic()
    except (OSError, ValueError, IndexError):
        return None
    others = (busy_after - busy_before) - (own_after - own_before)
    # The kernel counts in clock ticks (10 ms), so over a short interval on a full machine the difference can come
    # out a little above the number of cores (2.37 of 2 measured over 50 ms); no more cores than exist can be busy.
    return min(max(0.0, others / max(wall_after - wall_before, 1e-6)), float(os.cpu_count() or 1))


def apply_thread_policy(threads=None):
    """Set torch's intra-op threads and return the number.

    `threads` (or the environment variable TORCH_THREADS) wins; otherwise the cores that are free now. On a busy
    machine more threads than free cores is far slower, not faster: OpenMP barriers wait on threads the scheduler
    has put aside (13x slower measured with two threads on a loaded 2-core machine).
    """
    chosen = threads or int(os.environ.get("TORCH_THREADS", "0") or 0) or free_cores()
    torch.set_num_threads(chosen)
    return chosen


def world():
    """(rank, world size), initialising the process group when launched by torchrun with several processes."""
    size = int(os.environ.get("WORLD_SIZE", 1))
    if size <= 1:
        return 0, 1
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return torch.distributed.get_rank(), size


def average_gradients(parameters):
    _, size = world()
    if size == 1:
        return
    for p in parameters:
        if p.grad is not None:
            torch.distributed.all_reduce(p.grad)
            p.grad /= size


def validate_dataset(split, dataset, graph, resolution):
    """Check images and parents before anything is trained or written."""
    for attribute in ("x", "pa"):
        if not hasattr(dataset, attribute):
            raise DatasetError(f"{split} split: the data set has no {attribute!r} attribute")
    x = dataset.x
    if not torch.is_tensor(x) or x.dim() != 4 or tuple(x.shape[1:]) != (1, resolution, resolution):
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise DatasetError(f"{split} split: images must have shape [N, 1, {resolution}, {resolution}], got {shape}")
    n = x.shape[0]
    if n == 0:
        raise DatasetError(f"{split} split: no images")
    bad = ~torch.isfinite(x).flatten(1).all(1)
    if bad.any():
        raise DatasetError(f"{split} split: image row {int(bad.nonzero()[0])} has NaN or infinite pixels")
    out_of_range = (x.flatten(1).abs() > 1.0 + 1e-4).any(1)
    if out_of_range.any():
        raise DatasetError(f"{split} split: image row {int(out_of_range.nonzero()[0])} has pixels outside [-1, 1]")
    for node in graph.nodes:
        if node.name not in dataset.pa:
            raise DatasetError(f"{split} split: parent {node.name!r} is missing (graph {graph.name!r} needs it)")
        values = dataset.pa[node.name]
        if not torch.is_tensor(values) or values.shape != (n,):
            raise DatasetError(f"{split} split: parent {node.name!r} must be a tensor of shape [{n}]")
        if node.kind == CONTINUOUS:
            bad = ~torch.isfinite(values.float())
        elif node.kind == BINARY:
            bad = (values != 0) & (values != 1)
        else:
            bad = (values < 0) | (values >= node.cardinality) | (values != values.long())
        if bad.any():
            row = int(bad.nonzero()[0])
            raise DatasetError(f"{split} split: parent {node.name!r} has an invalid value at row {row}: {values[row]}")


class BatchSampler:
    """Epoch-wise random permutations from a private generator; its state is part of the checkpoint."""

    def __init__(self, n, batch_size, seed):
        self.n = n
        self.batch_size = min(batch_size, n)
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.randperm(n, generator=self.generator)
        self.position = 0

    def next(self):
        if self.position + self.batch_size > self.n:
            self.order = torch.randperm(self.n, generator=self.generator)
            self.position = 0
        batch = self.order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        rank, size = world()
        return batch[rank::size]

    def state_dict(self):
        return {"generator": self.generator.get_state(), "order": self.order, "position": self.position}

    def load_state_dict(self, state):
        self.generator.set_state(state["generator"])
        self.order = state["order"]
        self.position = state["position"]


def augment(x, preset):
    """Zero-pad (black), random crop back to size, random horizontal flip, as configured in the preset."""
    if preset.pad and preset.random_crop:
        size = x.shape[-1]
        padded = F.pad(x, [preset.pad] * 4, value=-1.0)
        offsets = torch.randint(0, 2 * preset.pad + 1, (x.shape[0], 2))
        x = torch.stack([padded[i, :, a : a + size, b : b + size] for i, (a, b) in enumerate(offsets.tolist())])
    if preset.hflip:
        flip = torch.rand(x.shape[0]) < 0.5
        x = torch.where(flip[:, None, None, None].to(x.device), x.flip(-1), x)
    return x


def take(dataset, index, device):
    pa = {name: values[index].to(device) for name, values in dataset.pa.items()}
    return dataset.x[index].to(device), pa


class EMA:
    """Exponential moving average of a module's parameters (the weights counterfactuals are made with)."""

    def __init__(self, module, rate):
        self.rate = rate
        self.module = copy.deepcopy(module).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, module):
        for shadow, live in zip(self.module.parameters(), module.parameters()):
            shadow.lerp_(live, 1 - self.rate)
        for shadow, live in zip(self.module.buffers(), module.buffers()):
            shadow.copy_(live)


def warmup_factor(step, warmup_steps):
    return min(1.0, (step + 1) / max(1, warmup_steps))


def clipped_step(optimizer, parameters, preset, step, base_lr):
    """Clip to `grad_clip`, skip the update when the norm exceeds `skip_threshold` (or is not finite).

    Returns the gradient norm and whether the update was applied.
    """
    parameters = [p for p in parameters if p.grad is not None]
    average_gradients(parameters)
    norm = nn.utils.clip_grad_norm_(parameters, preset.grad_clip).item()
    for group in optimizer.param_groups:
        group["lr"] = base_lr * warmup_factor(step, preset.warmup_steps)
    applied = math.isfinite(norm) and norm < preset.skip_threshold
    if applied:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm, applied


class StageTask:
    """Interface of one training stage (see the subclasses in pipeline.py and counterfactual_stage.py)."""

    name = "stage"

    def step(self, step):
        """One optimisation step; returns a dict of floats for the history."""
        raise NotImplementedError

    def state_dict(self):
        raise NotImplementedError

    def load_state_dict(self, state):
        raise NotImplementedError

    def evaluate(self):
        """Metrics at the end of the stage (validation losses, measured constraint, ...)."""
        return {}


class StageStopped(Exception):
    """Raised by a progress callback to interrupt a stage (the partial checkpoint stays for resuming)."""


def run_stage(
    task,
    total_steps,
    partial_path=None,
    meta=None,
    progress=None,
    time_budget=None,
    resume=False,
    checkpoint_every=100,
    history_every=10,
):
    """Drive `task` for `total_steps` steps; returns (metrics, history, steps done).

    With `meta["preset"]` (the run's snapshot), a partial checkpoint written with another snapshot is refused.
    """
    rank, _ = world()
    step, history = 0, []
    if resume and partial_path is not None and Path(partial_path).is_file():
        state = load_checkpoint(partial_path)
        if meta and "preset" in meta:
            require_same_snapshot(meta["preset"], state["meta"].get("preset"), partial_path)
        task.load_state_dict(state["task"])
        restore_rng(state["rng"])
        step, history = state["step"], state["history"]
    started = time.monotonic()
    while step < total_steps:
        if time_budget is not None and time.monotonic() - started > time_budget:
            break
        record = task.step(step)
        step += 1
        if step % history_every == 0 or step == total_steps:
            history.append({"step": step, **record})
        if partial_path is not None and rank == 0 and (step % checkpoint_every == 0) and step < total_steps:
            payload = {"task": task.state_dict(), "rng": capture_rng(), "step": step, "history": history}
            atomic_save({**payload, "meta": {**(meta or {}), "step": step, "complete": False}}, partial_path)
        if progress is not None:
            summary = ", ".join(f"{k} {v:.4g}" for k, v in record.items() if isinstance(v, float))
            progress(task.name, step / total_steps, f"step {step}/{total_steps} {summary}")
    return task.evaluate(), history, step

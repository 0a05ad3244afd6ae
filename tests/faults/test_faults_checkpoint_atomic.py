"""A half-written checkpoint is never loaded.

Checkpoints are written to `<name>.tmp` and renamed into place, so a process killed in the middle of a write leaves
the previous checkpoint intact and, at most, a truncated `.tmp` file that nothing reads. A stage is marked complete
in the run manifest only after its file is in place, so a stray stage file the manifest does not list is ignored.
"""

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from generator.data.graph import MIMIC_GRAPH
from generator.training.checkpoint import atomic_save, atomic_write_json, load_checkpoint, read_manifest
from generator.training.pipeline import RunConfig, train
from tests.generator.helpers import random_parents, tiny_preset

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]

# A child process that saves a large checkpoint slowly (in small slices, as a slow disk would) so it can be killed
# in the middle of the write.
SLOW_WRITER = textwrap.dedent(
    """
    import io, sys, time
    import torch
    from generator.training import checkpoint

    real_save = torch.save

    def slow_save(payload, path):
        buffer = io.BytesIO()
        real_save(payload, buffer)
        data = buffer.getvalue()
        with open(path, "wb") as out:
            for start in range(0, len(data), 64 * 1024):
                out.write(data[start : start + 64 * 1024])
                out.flush()
                time.sleep(0.02)

    checkpoint.torch.save = slow_save
    checkpoint.atomic_save({"version": "new", "weights": torch.randn(2_000_000)}, sys.argv[1])
    """
)


def test_a_writer_killed_mid_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    target = tmp_path / "hvae.partial.pt"
    atomic_save({"version": "old", "weights": torch.zeros(3)}, target)
    child = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(target)], cwd=ROOT)
    tmp = target.with_name(target.name + ".tmp")
    deadline = time.monotonic() + 60
    while not (tmp.exists() and tmp.stat().st_size > 256 * 1024) and time.monotonic() < deadline:
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)

    assert tmp.exists() and 0 < tmp.stat().st_size < 8_000_000, "the kill did not land mid-write"
    assert load_checkpoint(target)["version"] == "old"
    with pytest.raises(Exception):  # noqa: B017 - the truncated file is not a checkpoint at all
        torch.load(tmp, weights_only=False)


def test_a_json_manifest_write_is_atomic_too(tmp_path, monkeypatch):
    manifest = tmp_path / "run.json"
    atomic_write_json({"stages": {"parents": {"checkpoint": "p.pt"}}}, manifest)

    def failing_dumps(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("generator.training.checkpoint.json.dumps", failing_dumps)
    with pytest.raises(OSError):
        atomic_write_json({"stages": {}}, manifest)
    monkeypatch.undo()
    assert read_manifest(tmp_path)["stages"] == {"parents": {"checkpoint": "p.pt"}}


STEPS = {"parents": 2, "predictors": 1, "hvae": 2, "counterfactual": 1}


def split(n, seed, resolution=32):
    generator = torch.Generator().manual_seed(seed)
    pa = random_parents(n, generator)
    x = torch.rand(n, 1, resolution, resolution, generator=generator) * 2 - 1
    return SimpleNamespace(graph=MIMIC_GRAPH, x=x, pa=pa, ids=[str(i) for i in range(n)])


@pytest.mark.ml
def test_resume_never_reads_leftover_tmp_files_or_stage_files_the_manifest_does_not_list(tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "run"
    out.mkdir()
    garbage = b"PK\x03\x04 half of a checkpoint"
    # What a crash could leave: truncated temporaries, and a stage file whose manifest entry was never written.
    for name in ("parents.pt.tmp", "hvae.partial.pt.tmp", "run.json.tmp", "parents.pt"):
        (out / name).write_bytes(garbage)

    summary = train(
        RunConfig(preset="test-32", seed=1, steps=STEPS),
        tiny_preset(),
        {"train": split(16, 0), "valid": split(8, 1)},
        out,
        resume=True,
    )

    assert set(read_manifest(out)["stages"]) == {"parents", "predictors", "hvae", "counterfactual"}
    assert load_checkpoint(summary["checkpoints"]["parents"])["meta"]["complete"] is True


@pytest.mark.ml
def test_a_truncated_partial_checkpoint_is_refused_not_used(tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "run"
    out.mkdir()
    (out / "parents.partial.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(Exception) as raised:  # noqa: B017 - torch's own error for a broken archive
        train(
            RunConfig(preset="test-32", seed=1, steps=STEPS),
            tiny_preset(),
            {"train": split(16, 0), "valid": split(8, 1)},
            out,
            resume=True,
        )
    assert "parents.partial.pt" in str(raised.value) or raised.type.__name__ in ("RuntimeError", "UnpicklingError")
    assert read_manifest(out)["stages"] == {}

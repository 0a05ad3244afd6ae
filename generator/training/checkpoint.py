"""Atomic checkpoints and the run manifest.

A checkpoint is written to a temporary file and moved into place with os.replace, so a reader never sees half a
file. The manifest (run.json) lists a stage's checkpoint only after that file is complete; a crashed or interrupted
stage leaves at most a `<stage>.partial.pt` for resuming, never a stage marked complete.
"""

import hashlib
import json
import os
import subprocess
from pathlib import Path

import torch

MANIFEST = "run.json"
PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def code_version():
    """Git commit of the tree (when available) plus a digest of the generator's own source files."""
    digest = hashlib.sha256()
    for folder in ("causal", "training", "data"):
        for path in sorted((PACKAGE_ROOT / folder).glob("*.py")):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=PACKAGE_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "nogit"
    return f"{commit}+{digest.hexdigest()[:12]}"


def atomic_save(payload, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def atomic_write_json(data, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def load_checkpoint(path, map_location="cpu"):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return torch.load(path, map_location=map_location, weights_only=False)


def read_manifest(out_dir):
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        return {"stages": {}}
    return json.loads(path.read_text())


def record_stage(out_dir, stage, checkpoint_path, metrics, meta):
    """Mark a stage complete in the manifest; called only after its checkpoint file is in place."""
    manifest = read_manifest(out_dir)
    manifest.update({k: meta[k] for k in ("config", "preset", "seed", "code_version")})
    manifest["stages"][stage] = {"checkpoint": str(checkpoint_path), "metrics": metrics, "step": meta["step"]}
    atomic_write_json(manifest, Path(out_dir) / MANIFEST)
    return manifest


def capture_rng():
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state):
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

"""One entry point for training a run of any variant: the configuration's `variant` picks the training procedure.

"baseline" is the pipeline's stages alone (Ribeiro et al.); "expert" and "expert-al" add the expert term and active
learning (`proposed.run_proposed`).
"""

from generator.training import pipeline, proposed


def train_variant(config, preset, splits, out_dir, progress=None, resume=False):
    """Train (or resume) `config` with its preset snapshot `preset` on `splits` into `out_dir`; returns the training
    summary of its variant."""
    if config.variant in proposed.PROPOSED_VARIANTS:
        return proposed.run_proposed(config, preset, splits, out_dir, progress=progress, resume=resume)
    return pipeline.train(config, preset, splits, out_dir, progress=progress, resume=resume)

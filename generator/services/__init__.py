"""The generator's Django-side services: every state change of a TrainingRun, and the jobs around the ML core.

runs (create, find, queue; safe for the web process), training (train or resume a run), counterfactuals (images of a
run's model with their manifest), evaluation (judges and metrics), reports (tables of evaluated runs; safe for the web
process), stimuli (which data-set images may become study stimuli); requests holds one dataclass per job kind.
Management commands, background jobs and the admin parse their input and call one of these functions.
"""

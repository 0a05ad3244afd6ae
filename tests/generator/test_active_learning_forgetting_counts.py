"""Forgetting counts follow Algorithm 1; selection takes the most forgotten examples first."""

import numpy as np
import pytest
import torch

from generator.training.active_learning import (
    NEVER_LEARNED,
    forgetting_counts,
    forgetting_histogram,
    select_top,
    track_forgetting,
)


def test_counts_match_algorithm_one_worked_by_hand():
    # Columns are examples, rows presentations. Accuracy starts at 0, so a first correct answer is a learning event.
    history = np.array(
        [
            [1, 0, 0, 1, 0, 1],
            [0, 1, 0, 1, 1, 0],
            [1, 1, 0, 1, 0, 0],
            [0, 1, 0, 0, 1, 1],
        ]
    )
    # ex0: 1->0 at t1 and t3: 2.  ex1: learned at t1, kept: 0.  ex2: never right: ranked highest.
    # ex3: forgotten at t3: 1.  ex4: 0 1 0 1, forgotten at t2: 1.  ex5: 1 0 0 1, forgotten at t1: 1.
    counts = forgetting_counts(history)
    np.testing.assert_array_equal(counts, [2, 0, NEVER_LEARNED, 1, 1, 1])


def test_a_single_presentation_has_no_forgetting_events():
    np.testing.assert_array_equal(forgetting_counts([[1, 0]]), [0, NEVER_LEARNED])


def test_history_must_be_two_dimensional():
    with pytest.raises(ValueError, match=r"\[T, N\]"):
        forgetting_counts([1, 0, 1])


def test_histogram_gives_percentages_with_never_learned_apart():
    hist = forgetting_histogram([0, 0, 1, 3, NEVER_LEARNED])
    assert hist["counts"] == [0, 1, 2, 3]
    assert hist["percent"] == pytest.approx([40.0, 20.0, 0.0, 20.0])
    assert hist["never_learned_percent"] == pytest.approx(20.0)
    assert hist["n"] == 5


def test_select_top_ranks_never_learned_first_and_breaks_ties_by_position():
    scores = np.array([1, 3, NEVER_LEARNED, 3, 0, 1])
    np.testing.assert_array_equal(select_top(scores, 4), [2, 1, 3, 0])
    assert len(select_top(scores, 0)) == 0
    with pytest.raises(ValueError, match="cannot select 7 of 6"):
        select_top(scores, 7)


@pytest.mark.ml
def test_tracking_records_every_example_at_every_epoch_and_is_reproducible():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    x = -0.5 + 0.1 * torch.randn(60, 1, 16, 16, generator=generator)
    for k in range(3):
        x[labels == k, :, 5 * k : 5 * k + 5, :] += 1.0
    counts, history = track_forgetting(x, labels, epochs=6, batch_size=16, seed=3)
    assert history.shape == (6, 60)
    np.testing.assert_array_equal(counts, forgetting_counts(history))
    assert history[-1].mean() > 0.9
    again, history_again = track_forgetting(x, labels, epochs=6, batch_size=16, seed=3)
    np.testing.assert_array_equal(history, history_again)

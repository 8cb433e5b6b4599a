"""heads.train.EarlyStopping on hand-written value sequences: which epochs are a new best, when it stops."""
from __future__ import annotations

import math

from heads.train import EarlyStopping


def _run(stopping: EarlyStopping, values):
    """[(improved, stale, should_stop)] after each update, epochs numbered from 1."""
    return [(stopping.update(v, e), stopping.stale, stopping.should_stop) for e, v in enumerate(values, start=1)]


def test_max_mode_a_tie_is_not_an_improvement_and_patience_counts_stale_epochs():
    s = EarlyStopping("max", patience=2)
    assert _run(s, [0.5, 0.7, 0.7, 0.6]) == [(True, 0, False), (True, 0, False), (False, 1, False), (False, 2, True)]
    assert (s.best, s.best_epoch) == (0.7, 2)


def test_min_mode_lower_is_better_and_an_improvement_resets_the_count():
    s = EarlyStopping("min", patience=2)
    assert _run(s, [0.9, 1.0, 0.4, 0.4, 0.5]) == [(True, 0, False), (False, 1, False), (True, 0, False),
                                                   (False, 1, False), (False, 2, True)]
    assert (s.best, s.best_epoch) == (0.4, 3)


def test_patience_zero_never_stops():
    s = EarlyStopping("max", patience=0)
    steps = _run(s, [0.9, 0.1, 0.1, 0.1, 0.1, 0.1])
    assert [stop for _, _, stop in steps] == [False] * 6
    assert s.stale == 5 and (s.best, s.best_epoch) == (0.9, 1)


def test_nan_is_kept_first_then_replaced_and_never_an_improvement_later():
    s = EarlyStopping("min", patience=3)
    assert s.best_epoch is None
    assert _run(s, [math.nan, 0.3, math.nan, 0.2]) == [(True, 0, False), (True, 0, False), (False, 1, False),
                                                       (True, 0, False)]
    assert (s.best, s.best_epoch) == (0.2, 4)
    first = EarlyStopping("max", patience=1)
    assert first.update(math.nan, 1) and math.isnan(first.best) and first.best_epoch == 1

"""Early stopping: patience counts the evaluations since the raw or the smoothed HR@10 last improved."""

from tcf.rec.trainer import FitState


def _feed(values, smoothing, patience):
    """The epoch training stops after (None: never), and the state, for validation figures one per epoch."""
    state = FitState()
    for epoch, v in enumerate(values, 1):
        state.observe(v, epoch, smoothing)
        if state.bad > patience:
            return epoch, state
    return None, state


def test_smoothing_one_is_plain_patience():
    stopped, state = _feed([0.1, 0.3, 0.2, 0.2, 0.2, 0.2], smoothing=1, patience=3)
    assert stopped == 6 and state.best_epoch == 2 and state.best_hr == 0.3


def test_a_spike_does_not_end_a_run_that_improves_on_average():
    # raw figure never beats the spike at epoch 2, but the mean of the last 3 keeps rising
    values = [0.1, 0.5, 0.1, 0.3, 0.35, 0.4, 0.45, 0.48]
    assert _feed(values, smoothing=1, patience=3)[0] == 6
    stopped, state = _feed(values, smoothing=3, patience=3)
    assert stopped is None and state.best_epoch == 2


def test_a_new_raw_best_resets_patience_under_an_early_smoothed_spike():
    # epoch 1's figure alone is the smoothed best; later windows average below it while the raw figure climbs
    values = [0.30, 0.10, 0.20, 0.31, 0.32, 0.33, 0.34, 0.35]
    stopped, state = _feed(values, smoothing=5, patience=2)
    assert stopped is None and state.best_epoch == 8 and state.bad == 0
    _, early = _feed(values[:4], smoothing=5, patience=2)
    assert early.best_smoothed == 0.30 and early.bad == 0  # the spike still holds the smoothed best at epoch 4


def test_stops_when_neither_figure_improves():
    values = [0.2, 0.3, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25]
    stopped, state = _feed(values, smoothing=2, patience=2)
    # smoothed: .2 .25 .275 .25 ...: last improvement at epoch 3, raw at epoch 2
    assert stopped == 6 and state.best_epoch == 2

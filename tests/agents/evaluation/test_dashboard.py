"""The decision-collapse dashboard: crop rates by baseline rank over training, per variant."""

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agents.evaluation.dashboard import decision_state, plot_decision_dashboard, smooth, write_tensorboard_means


def history(rates, bucket_one=None):
    rows = []
    for i, rate in enumerate(rates):
        row = {"iteration": i + 1, "rc_rate": rate, "reward": 0.1 * i, "rc_rate[11-K]": rate}
        if bucket_one is not None:
            row["rc_rate[1]"] = bucket_one[i]
        rows.append(row)
    return rows


@pytest.mark.parametrize("rates, state", [([0.5, 0.02, 0.0, 0.01], "never crops"), ([0.5, 0.97, 1.0, 1.0], "crops everything"),
                                          ([0.9, 0.4, 0.5, 0.6], "selective")])
def test_decision_state_names_a_collapse(rates, state):
    assert decision_state(history(rates), window=3) == state


def test_a_collapse_under_forced_balancing_is_a_collapse():
    # r-GRPO forces one FULL into each group of 16: a policy that always crops samples 15/16.
    # Resampled (found in extra draws) or forced, the group needed balancing either way.
    forced = [dict(row, balance_balanced=0.0) for row in history([0.9375] * 4)]
    assert decision_state(forced, window=3) == "crops everything"
    assert decision_state([dict(row, balance_balanced=0.02) for row in history([0.0625] * 4)], window=3) == "never crops"
    # Confident per query but not the same everywhere: many balanced-up groups, a middling rate.
    assert decision_state([dict(row, balance_balanced=0.05) for row in history([0.8] * 4)], window=3) == "selective"


def test_smooth_skips_iterations_without_that_bucket():
    values = smooth(np.array([np.nan, 1.0, np.nan, 0.0]), window=2)
    assert np.isnan(values[0]) and values[1:].tolist() == [1.0, 1.0, 0.0]


def test_dashboard_png_and_tensorboard_means(tmp_path):
    runs = [{"variant": "rgrpo", "seed": s, "history": history([0.5, 0.4, 0.3], [np.nan, 0.2, 0.1])} for s in (0, 1)]
    runs.append({"variant": "rloo", "seed": 0, "history": history([0.9, 1.0, 1.0, 1.0])})
    assert plot_decision_dashboard(runs, tmp_path / "dashboard.png").stat().st_size > 0
    logdir = write_tensorboard_means(runs, tmp_path / "tb")
    events = EventAccumulator(str(logdir / "rgrpo")).Reload()
    assert [e.value for e in events.Scalars("decisions/rc_rate")] == pytest.approx([0.5, 0.4, 0.3])
    assert [e.step for e in events.Scalars("decisions/rc_rate[1]")] == [2, 3]  # iteration 1 had no such query
    assert "reward" in EventAccumulator(str(logdir / "rloo")).Reload().Tags()["scalars"]

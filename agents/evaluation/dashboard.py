"""The decision-collapse dashboard: does a policy keep deciding *when* to crop?

Tool-use collapse (a policy that stops cropping, or crops everything) is the failure most
reported for agentic RL. It hides in the overall crop rate: a policy cropping 50% of the
queries may be selective (rarely where FULL already ranks the positive first, often where
it ranks it 11th or worse) or a coin. The dashboard plots, over training iterations, the
sampled crop rate overall and per baseline-rank bucket (``rc_rate``, ``rc_rate[1]``, ...,
as :mod:`agents.local.trainer` logs them) next to the mean training reward, one row per
variant (mean over its seeds, min-max band), and names the state each run ends in
(:func:`decision_state`). :func:`write_tensorboard_means` writes the same means as
TensorBoard scalars, one run folder per variant.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from rewards.evaluation import RANK_BUCKETS

CROP_KEYS = ("rc_rate", *(f"rc_rate[{name}]" for name, _, _ in RANK_BUCKETS))
"""The crop rates of the dashboard: overall, then one per baseline-rank bucket."""
DASHBOARD_KEYS = (*CROP_KEYS, "reward")
COLLAPSE_LOW, COLLAPSE_HIGH = 0.05, 0.95
"""A final crop rate below / above these is a collapse to "never" / "always" crop."""
FORCED_COLLAPSE = 0.9
"""r-GRPO balances each group (a resampled or forced member of the missing decision), so a
collapsed policy's sampled rate sits at 1/n or (n-1)/n, not 0 or 1: a rate beyond
1 - FORCED_COLLAPSE (or under it) while more than this share of groups needed balancing
is a collapse too."""


def decision_state(history: list[dict], window: int = 20) -> str:
    """``"never crops"``, ``"crops everything"`` or ``"selective"``, from the sampled crop
    rate and the share of groups that needed balancing over the last ``window`` iterations."""
    rate = float(np.mean([h["rc_rate"] for h in history[-window:]]))
    forced = float(np.mean([1.0 - h.get("balance_balanced", 1.0) for h in history[-window:]]))
    if rate > COLLAPSE_HIGH or (forced > FORCED_COLLAPSE and rate > FORCED_COLLAPSE):
        return "crops everything"
    if rate < COLLAPSE_LOW or (forced > FORCED_COLLAPSE and rate < 1 - FORCED_COLLAPSE):
        return "never crops"
    return "selective"


def curve(history: list[dict], key: str) -> np.ndarray:
    """One metric per iteration (NaN where a batch had no query of that bucket)."""
    return np.array([h.get(key, np.nan) for h in history], dtype=np.float64)


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` iterations, skipping NaNs (same length as ``values``)."""
    out = np.full(len(values), np.nan)
    for i in range(len(values)):
        part = values[max(0, i - window + 1) : i + 1]
        if np.isfinite(part).any():
            out[i] = np.nanmean(part)
    return out


def across_seeds(stat, values: np.ndarray) -> np.ndarray:
    """``stat`` (np.nanmean, np.nanmin, ...) over axis 0, NaN where every seed is NaN
    (a bucket no batch held yet) without numpy's empty-slice warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return stat(values, axis=0)


def variant_curves(runs: list[dict]) -> dict[str, dict[str, np.ndarray]]:
    """``{variant: {key: (seeds, iterations) array}}``, cut to each variant's shortest run."""
    curves: dict[str, dict[str, np.ndarray]] = {}
    for name in dict.fromkeys(r["variant"] for r in runs):
        histories = [r["history"] for r in runs if r["variant"] == name]
        length = min(len(h) for h in histories)
        curves[name] = {key: np.stack([curve(h[:length], key) for h in histories]) for key in DASHBOARD_KEYS}
    return curves


def plot_decision_dashboard(runs: list[dict], path: Path, window: int | None = None) -> Path:
    """``path`` (PNG): per variant of ``runs`` (dicts with ``variant``, ``seed``, ``history``)
    its crop rates by baseline-rank bucket and its mean reward over training iterations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = variant_curves(runs)
    fig, axes = plt.subplots(len(curves), 2, figsize=(10, 2.6 * len(curves)), squeeze=False,
                             gridspec_kw={"width_ratios": [2, 1]})
    colors = dict(zip(CROP_KEYS, ("black", "tab:green", "tab:blue", "tab:orange", "tab:red")))
    for (name, keys), (ax_rc, ax_reward) in zip(curves.items(), axes):
        seeds = [r for r in runs if r["variant"] == name]
        length = keys["reward"].shape[1]
        w = window or max(1, length // 20)
        x = np.arange(1, length + 1)
        for key in CROP_KEYS:
            values = np.stack([smooth(v, w) for v in keys[key]])
            label = "all queries" if key == "rc_rate" else "FULL rank " + key[len("rc_rate["):-1]
            ax_rc.plot(x, across_seeds(np.nanmean, values), color=colors[key], lw=2 if key == "rc_rate" else 1.2, label=label)
            if len(values) > 1:
                ax_rc.fill_between(x, across_seeds(np.nanmin, values), across_seeds(np.nanmax, values), color=colors[key], alpha=0.12)
        states = ", ".join(sorted({decision_state(r["history"]) for r in seeds}))
        plural = "s" if len(seeds) != 1 else ""
        ax_rc.set(ylim=(-0.02, 1.02), ylabel="crop rate", title=f"{name} ({len(seeds)} seed{plural}): ends {states}")
        rewards = np.stack([smooth(v, w) for v in keys["reward"]])
        ax_reward.plot(x, rewards.mean(0), color="tab:purple")
        if len(rewards) > 1:
            ax_reward.fill_between(x, rewards.min(0), rewards.max(0), color="tab:purple", alpha=0.15)
        ax_reward.set(ylabel="mean training reward", title="reward")
    axes[0, 0].legend(fontsize=7, ncol=5, loc="upper center")
    for ax in axes[-1]:
        ax.set_xlabel("iteration")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_tensorboard_means(runs: list[dict], logdir: Path) -> Path:
    """The dashboard's curves as TensorBoard scalars: ``logdir/<variant>`` holds the mean
    over that variant's seeds of each key (``tensorboard --logdir logdir`` overlays the
    variants; each run's own events sit in its ``tb/`` folder)."""
    from torch.utils.tensorboard import SummaryWriter

    for name, keys in variant_curves(runs).items():
        with SummaryWriter(str(logdir / name.replace("+", "_"))) as writer:
            for key, values in keys.items():
                for iteration, value in enumerate(across_seeds(np.nanmean, values), start=1):
                    if np.isfinite(value):
                        writer.add_scalar(f"decisions/{key}" if key != "reward" else "reward", float(value), iteration)
    return logdir


def plot_validation_curves(runs: dict[str, dict], path: Path) -> Path:
    """``path`` (PNG): the greedy validation MRR of each run and its crop rate by the FULL
    rank of the positive over training steps. ``runs`` maps a label (``rgrpo seed 0``) to a
    verl run summary (:func:`agents.verl.launch.summarize`); runs whose labels share the
    text before `` seed`` share a colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    buckets = [name for name, _, _ in RANK_BUCKETS]
    fig, axes = plt.subplots(1, 1 + len(buckets), figsize=(3.2 * (1 + len(buckets)), 3.0), sharex=True)
    groups = list(dict.fromkeys(label.split(" seed")[0] for label in runs))
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for label, summary in runs.items():
        points = [p for p in summary["validation"] if "mrr" in p]
        if not points:
            continue
        color = palette[groups.index(label.split(" seed")[0]) % len(palette)]
        steps = [p["step"] for p in points]
        axes[0].plot(steps, [p["mrr"] for p in points], color=color, marker=".", alpha=0.8, label=label)
        for ax, bucket in zip(axes[1:], buckets):
            rates = [np.nan if p["rc"][bucket] is None else p["rc"][bucket] for p in points]
            ax.plot(steps, rates, color=color, marker=".", alpha=0.8)
    axes[0].set(title="validation MRR (greedy)", xlabel="step")
    axes[0].legend(fontsize=6)
    for ax, bucket in zip(axes[1:], buckets):
        ax.set(title=f"crop rate, FULL rank {bucket}", xlabel="step", ylim=(-0.02, 1.02))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

"""r-GRPO: group-relative advantages with decision-balanced groups and baselines.

Region-R1 trains its cropping policy with GRPO plus two changes (docs/DESIGN.md "r-GRPO"):

1. Decision-balanced groups. Every group of ``n >= 2`` rollouts of one query holds both
   decisions (0 = FULL, 1 = REGION). When one is missing, extra rollouts are drawn for
   that query until it appears (bounded by a budget) and one is swapped in for a member
   of the majority decision; only when the budget is spent is the decision forced, and
   the caller masks the forced tokens out of the loss. :func:`balance_group` decides
   which of the three paths ("balanced", "resampled", "forced") a group takes.
2. Decision-balanced baseline. The baseline of a group is the mean of the per-decision
   mean scores, so a frequent decision does not set the baseline for a rare one:
   ``A_i = (s_i - b_g) / (std_g + eps)``. Without decisions (or when a group holds one
   decision only) ``b_g`` is the group mean, and the estimator is verl's GRPO exactly,
   singleton groups included (mean 0, std 1, as verl does).

Everything here is a pure function of tensors and sequences, shared by the CPU trainer
and the verl glue in :mod:`agents.verl.plugin`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable, Hashable, Iterable, Literal, Sequence

import torch

from envs.actions import FULL, REGION

BalancePath = Literal["balanced", "resampled", "forced"]
BALANCE_PATHS: tuple[BalancePath, ...] = ("balanced", "resampled", "forced")


def group_rows(index: Sequence[Hashable]) -> dict[Hashable, list[int]]:
    """Rows of each group, keyed by group id in order of first appearance."""
    groups: dict[Hashable, list[int]] = {}
    for row, group_id in enumerate(index):
        groups.setdefault(group_id, []).append(row)
    return groups


def excluded_as_singletons(index: Sequence[Hashable], excluded: Sequence[bool]) -> list[Hashable]:
    """``index`` with every excluded row moved into a group of its own."""
    if len(excluded) != len(index):
        raise ValueError(f"excluded has {len(excluded)} entries for {len(index)} samples")
    return [("excluded", row) if flag else group_id for row, (group_id, flag) in enumerate(zip(index, excluded))]


def validate_decisions(decisions: Sequence[object], name: str = "decisions") -> list[int]:
    """``decisions`` as Python ints; raises ``ValueError`` naming the first bad entry.

    Any integer label (numpy integers included) is a decision class; bools, ``None``,
    floats and strings are rejected.
    """
    values = []
    for row, decision in enumerate(decisions):
        if isinstance(decision, bool) or not hasattr(decision, "__index__"):
            raise ValueError(f"{name}[{row}] = {decision!r}: expected an integer decision (0 FULL, 1 REGION)")
        values.append(int(decision))
    return values


def group_mean_baseline(scores: torch.Tensor, index: Sequence[Hashable]) -> torch.Tensor:
    """Per-sample GRPO baseline: the mean score of the sample's group (0 for a singleton)."""
    baseline = torch.zeros_like(scores)
    for rows in group_rows(index).values():
        if len(rows) > 1:
            baseline[rows] = torch.mean(scores[rows])
    return baseline


def decision_balanced_baseline(
    scores: torch.Tensor, index: Sequence[Hashable], decisions: Sequence[int]
) -> torch.Tensor:
    """Per-sample r-GRPO baseline: the mean over the decisions present in the sample's group
    of the per-decision mean scores (0 for a singleton, as verl's GRPO).

    With one decision present it is the group mean, so a group without both decisions is
    scored exactly as GRPO scores it. Every distinct label is a class of its own: a
    malformed answer labelled -1 gets a class mean like FULL and REGION, so a group of
    valid answers of one decision and malformed ones still rewards the valid answers
    relative to the malformed.
    """
    decisions = validate_decisions(decisions)
    if len(decisions) != scores.shape[0]:
        raise ValueError(f"decisions has {len(decisions)} entries for {scores.shape[0]} samples")
    baseline = torch.zeros_like(scores)
    for rows in group_rows(index).values():
        if len(rows) == 1:
            continue
        by_decision: dict[int, list[int]] = {}
        for row in rows:
            by_decision.setdefault(decisions[row], []).append(row)
        if len(by_decision) == 1:
            baseline[rows] = torch.mean(scores[rows])
        else:
            decision_means = [torch.mean(scores[members]) for _, members in sorted(by_decision.items())]
            baseline[rows] = torch.mean(torch.stack(decision_means))
    return baseline


def group_std(scores: torch.Tensor, index: Sequence[Hashable]) -> torch.Tensor:
    """Per-sample unbiased std of the sample's group (1 for a singleton), as verl's GRPO."""
    std = torch.ones_like(scores)
    for rows in group_rows(index).values():
        if len(rows) > 1:
            std[rows] = torch.std(scores[rows])
    return std


def compute_rgrpo_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Sequence[Hashable],
    decisions: Sequence[int] | None = None,
    epsilon: float = 1e-6,
    norm_adv_by_std_in_grpo: bool = True,
    excluded: Sequence[bool] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """r-GRPO outcome advantages, broadcast over the response tokens.

    Args:
        token_level_rewards: ``(bs, response_length)``; a sample's score is its row sum.
        response_mask: ``(bs, response_length)``, 1 on tokens that get the advantage.
        index: ``bs`` group ids (verl's ``uid`` array): the rollouts of one query.
        decisions: ``bs`` integer decisions (0 FULL, 1 REGION), or ``None`` for plain GRPO.
        epsilon: added to the std before dividing.
        norm_adv_by_std_in_grpo: divide by the group std (GRPO) or not (Dr.GRPO).
        excluded: ``bs`` flags of samples to leave out of their group's statistics, such
            as episodes the scoring service failed (their reward 0 says nothing about the
            policy): each becomes a group of its own, so its advantage is 0 and it moves no
            other sample's baseline or std. ``None``: no sample is excluded.

    Returns:
        ``(advantages, returns)``, both ``(bs, response_length)`` and the same tensor, as
        verl's estimators return them.
    """
    if token_level_rewards.dim() != 2:
        raise ValueError(
            f"token_level_rewards must be (bs, response_length), got shape {tuple(token_level_rewards.shape)}"
        )
    if response_mask.shape != token_level_rewards.shape:
        raise ValueError(
            f"response_mask shape {tuple(response_mask.shape)} != token_level_rewards shape "
            f"{tuple(token_level_rewards.shape)}"
        )
    if len(index) != token_level_rewards.shape[0]:
        raise ValueError(f"index has {len(index)} entries for {token_level_rewards.shape[0]} samples")
    if excluded is not None:
        index = excluded_as_singletons(index, excluded)
    with torch.no_grad():
        scores = token_level_rewards.sum(dim=-1)
        if decisions is None:
            baseline = group_mean_baseline(scores, index)
        else:
            baseline = decision_balanced_baseline(scores, index, decisions)
        advantages = scores - baseline
        if norm_adv_by_std_in_grpo:
            advantages = advantages / (group_std(scores, index) + epsilon)
        advantages = advantages.unsqueeze(-1) * response_mask
    return advantages, advantages


def validate_binary_decisions(decisions: Sequence[object], name: str = "decisions") -> list[int]:
    """``decisions`` as ints in ``{0, 1}``; raises ``ValueError`` naming the first bad entry."""
    values = validate_decisions(decisions, name)
    for row, decision in enumerate(values):
        if decision not in (FULL, REGION):
            raise ValueError(f"{name}[{row}] = {decision}: expected 0 (FULL) or 1 (REGION)")
    return values


def needs_balancing(decisions: Sequence[int]) -> int | None:
    """The decision (0 or 1) missing from a group of ``n >= 2``, or ``None`` if none is.

    A group of fewer than two rollouts cannot hold both decisions and is left alone.
    """
    values = validate_binary_decisions(decisions)
    if len(values) < 2:
        return None
    missing = [decision for decision in (FULL, REGION) if decision not in values]
    return missing[0] if missing else None


@dataclass(frozen=True)
class BalanceResult:
    """How one group was balanced, and what the caller must do to its rollouts."""

    path: BalancePath
    """"balanced": both decisions were already present (or ``n < 2``), nothing changes.
    "resampled": extra draw ``swap_in_draw`` has the missing decision; it replaces
    member ``swap_out``. "forced": the budget was spent; the caller regenerates member
    ``swap_out`` with the ``missing`` decision forced and masks the forced tokens."""
    decisions: tuple[int, ...]
    """The group's decisions after the swap (what the estimator will see)."""
    missing: int | None = None
    """The decision that was missing, if any."""
    swap_out: int | None = None
    """Index of the group member to replace (a member of the majority decision)."""
    swap_in_draw: int | None = None
    """0-based index of the extra draw that brings the missing decision ("resampled")."""
    draws: int = 0
    """How many extra rollouts were drawn (all but ``swap_in_draw`` are discarded)."""


@dataclass(frozen=True)
class BalancePlan:
    """How a group that lacks a decision gets it (docs/DESIGN.md "r-GRPO", point 1).

    Pure: the caller draws the extra rollouts (synchronously in the CPU trainer, awaited in
    the verl agent loop) until :meth:`done`, then :meth:`result` says what to keep.
    """

    decisions: tuple[int, ...]
    """The group's sampled decisions."""
    missing: int
    """The decision no member took."""
    swap_out: int
    """Index of the member replaced: the last one (the rollouts are exchangeable, so which
    one does not bias the group)."""
    budget: int
    """The most extra rollouts to draw before forcing the decision."""

    def done(self, draws: Sequence[int]) -> bool:
        """Whether the extra ``draws`` so far (their decisions, in order) end the search."""
        return len(draws) >= self.budget or (len(draws) > 0 and draws[-1] == self.missing)

    def result(self, draws: Sequence[int]) -> BalanceResult:
        """The outcome after ``draws``: "resampled" if the last draw brings the missing decision, else "forced"."""
        balanced = self.decisions[: self.swap_out] + (self.missing,)
        if draws and draws[-1] == self.missing:
            return BalanceResult("resampled", balanced, self.missing, self.swap_out, len(draws) - 1, len(draws))
        return BalanceResult("forced", balanced, self.missing, self.swap_out, None, len(draws))


def plan_balance(decisions: Sequence[int], budget: int) -> BalancePlan | None:
    """The plan for a group of ``decisions`` (0 FULL / 1 REGION), or ``None`` if it already
    holds both (or has fewer than two members) and nothing changes."""
    if budget < 0:
        raise ValueError(f"budget = {budget}: must be >= 0")
    missing = needs_balancing(decisions)
    if missing is None:
        return None
    return BalancePlan(tuple(int(d) for d in decisions), missing, len(decisions) - 1, budget)


def balance_group(decisions: Sequence[int], draw_extra: Callable[[], int], budget: int) -> BalanceResult:
    """Balance a group by :func:`plan_balance`, drawing synchronously.

    Args:
        decisions: the group's sampled decisions, 0 (FULL) or 1 (REGION).
        draw_extra: draws one more on-policy rollout for the same query and returns its
            decision; the caller keeps the rollouts, in draw order.
        budget: the most extra rollouts to draw before forcing the decision.
    """
    plan = plan_balance(decisions, budget)
    if plan is None:
        return BalanceResult("balanced", tuple(int(d) for d in decisions))
    draws: list[int] = []
    while not plan.done(draws):
        draws.extend(validate_binary_decisions([draw_extra()], name="draw_extra()"))
    return plan.result(draws)


def balance_path_rates(results: Iterable[BalanceResult]) -> dict[BalancePath, float]:
    """Fraction of groups that took each path, for logging (all three keys, summing to 1)."""
    counts = Counter(result.path for result in results)
    total = sum(counts.values())
    if total == 0:
        raise ValueError("balance_path_rates needs at least one BalanceResult")
    return {path: counts[path] / total for path in BALANCE_PATHS}

"""A query's rollouts inside one agent-loop worker, so its group can be decision-balanced.

verl's v1 agent-loop worker runs the ``n`` rollouts of a prompt (same ``uid``) together in
one process. Each rollout :meth:`DecisionGroups.join` s its group before its first
``await``, reports its first decision, and waits until every member has reported; the
group then holds the :class:`agents.rgrpo.BalancePlan` (the same pure planner the CPU
trainer uses) and the member it names swaps its answer. Malformed answers are neither
decision: a group is balanced over its parsed answers.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from agents.rgrpo import BalancePlan, plan_balance
from envs.actions import FULL, REGION


@dataclass
class Group:
    """The rollouts of one query in this process."""

    budget: int
    """Extra draws the swapped member may make (:attr:`agents.rgrpo.BalancePlan.budget`)."""
    members: list[int] = field(default_factory=list)
    left: set[int] = field(default_factory=set)
    decisions: dict[int, int | None] = field(default_factory=dict)
    reported: asyncio.Event = field(default_factory=asyncio.Event)
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    plan: BalancePlan | None = None
    swap_out: int | None = None
    """Ticket of the member that redraws (the plan's ``swap_out`` among the valid members)."""
    path: str = "balanced"

    def report(self, ticket: int, decision: int | None) -> None:
        """Record a member's first decision (``None``: it dropped out); plan when all are in."""
        if ticket in self.decisions:
            return
        self.decisions[ticket] = decision
        if len(self.decisions) < len(self.members):
            return
        valid = [t for t in self.members if self.decisions[t] in (FULL, REGION)]
        self.plan = plan_balance([self.decisions[t] for t in valid], self.budget) if len(valid) >= 2 else None
        if self.plan is not None:
            self.swap_out = valid[self.plan.swap_out]
        else:
            both = {self.decisions[t] for t in valid} == {FULL, REGION}
            self.settle("balanced" if both or len(self.members) < 2 else "few_valid")
        self.reported.set()

    def settle(self, path: str) -> None:
        """Publish how the group ended up: balanced, resampled, forced, few_valid or failed."""
        self.path = path
        self.settled.set()


class DecisionGroups:
    """Rollouts of the same ``uid`` in this process."""

    def __init__(self) -> None:
        self._groups: dict[str, Group] = {}
        self._next_ticket = 0

    def join(self, uid: str, budget: int) -> tuple[Group, int]:
        """Enter the group of ``uid``. Called before the first ``await`` of a run, so all
        rollouts of a query that verl created in one batch have joined before any reports."""
        group = self._groups.setdefault(uid, Group(budget))
        self._next_ticket += 1
        group.members.append(self._next_ticket)
        return group, self._next_ticket

    def leave(self, uid: str, group: Group, ticket: int) -> None:
        """Leave the group at the end of a run (or on an error, which then counts as no decision)."""
        group.report(ticket, None)
        if ticket == group.swap_out and not group.settled.is_set():
            group.settle("failed")
        group.left.add(ticket)
        if len(group.left) == len(group.members) and self._groups.get(uid) is group:
            del self._groups[uid]

"""``hg-dagger``: human-gated DAgger (Kelly et al., 2019), with labels where the decision was made.

The policy drives; an operator (simulated: the expert behind a gate; on a robot bridge: a human)
takes over when the gate fires and drives until the takeover's job is done (actors/operator.py).
Per takeover:

- its steps go to ``corrections`` as ``intervention``, labelled with the expert's chunk at every
  step when a simulated operator drove (else, or with ``takeover.labels: driven``, the executed
  actions: what a human operator gives); a takeover that hit its cap
  or whose expert could no longer plan is skipped (``Takeover.skipped``);
- the policy's last ``pre_intervention_chunks`` planning states before it go to ``corrections``
  as ``pre_intervention_relabel``, labelled with the expert's chunk from each (when recorded);
- the policy steps from the first of those planning states to the takeover go to ``rollouts`` as
  ``pre_intervention`` (unlabelled bridge trajectories: the ``pre_intervention_chunks`` x
  execute_steps steps before it, and at least the last chunk's even when no planning state is
  relabelled: the chunk that went wrong is never trained on as the robot's own good steps).

Every other step goes to ``rollouts`` as ``robot`` (``robot_failure`` when the episode failed).
"""

from __future__ import annotations

from fleetloop.actors.dagger.base import (
    INTERVENTION,
    PRE_INTERVENTION,
    PRE_INTERVENTION_RELABEL,
    DaggerMode,
    Segment,
    robot_class,
    runs,
)


class HGDagger(DaggerMode):
    name = "hg-dagger"
    gated = True

    def segments(self, traj, options) -> list[Segment]:
        parts: list[Segment] = []
        pre_intervention_chunks = options.pre_intervention_chunks
        label_takeovers = options.takeover.labels == "chunk"
        owner: dict[int, str] = {}
        previous_end = 0
        for takeover in traj.takeovers:
            steps = tuple(range(takeover.start, takeover.end))
            owner.update(dict.fromkeys(steps, INTERVENTION))
            before = self._planning_states_before(traj, takeover.start, previous_end, pre_intervention_chunks)
            span = max(1, pre_intervention_chunks) * traj.execute_steps
            first = before[0] if before else max(previous_end, takeover.start - span)
            owner.update({step: PRE_INTERVENTION for step in range(first, takeover.start) if step not in owner})
            previous_end = takeover.end
            if takeover.skipped or not steps:
                continue
            labelled = label_takeovers and all(step in traj.labels and step in traj.frames for step in steps)
            parts.append(Segment("corrections", INTERVENTION, steps, labelled=labelled))
            if before:
                parts.append(Segment("corrections", PRE_INTERVENTION_RELABEL, before, labelled=True))
        robot = robot_class(traj.success)
        for cls in (PRE_INTERVENTION, robot):
            mine = [step for step in range(len(traj.states)) if owner.get(step, robot) == cls]
            parts += [Segment("rollouts", cls, run) for run in runs(mine)]
        return parts

    @staticmethod
    def _planning_states_before(traj, start: int, after: int, count: int) -> tuple[int, ...]:
        """The last ``count`` planning states the policy drove in ``[after, start)`` that carry a label."""
        planned = [plan.step for plan in traj.plans
                   if plan.driver == "policy" and after <= plan.step < start and plan.step in traj.labels
                   and plan.step in traj.frames]
        return tuple(planned[-count:]) if count else ()

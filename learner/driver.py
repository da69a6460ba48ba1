"""TrainingDriver: how a learner is driven, in one place for `fleetloop up` (both modes) and `fleetloop learner`.

What the driver decides, and nobody else:

- the *start*: a fresh learner (not resumed) without ``learner.init_from`` fits the normalisation
  on every embodiment of its mixture's tables; every fresh learner then saves a step-0
  checkpoint, so a learner that crashes before its first own checkpoint resumes with that
  normalisation; in synchronous rounds, ``learner.refit_normalization`` refits it before
  every round after the first;
- the *chunks*: training runs in calls that end on publish boundaries (the learner publishes
  every ``learner.publish_every`` steps inside ``train``), never past a target step;
- the *finish*: a final publish and checkpoint, so a stopped learner loses no step.

The learner it drives is anything with the Learner's methods called synchronously: the
``Learner`` itself (each rank of ``fleetloop learner`` drives its own, every call collective), or a
Ray actor or ``LearnerGroup`` behind ``RemoteLearner`` (`fleetloop up`). The asynchronous loop
issues its train calls itself (it waits on the fleet at the same time) and sizes them with
``chunk_steps``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from fleetloop.config import LearnerSection


def chunk_steps(step: int, target: int, publish_every: int) -> int:
    """Steps of the next train call from ``step``: up to the next publish boundary, never past
    ``target`` (0 once it is reached)."""
    return max(0, min(publish_every - step % publish_every, target - step))


class RemoteLearner:
    """A Ray learner actor or ``LearnerGroup`` called synchronously: ``remote.method(...)`` runs
    ``handle.method.remote(...)`` and resolves it with ``resolve(ref, what)`` (which turns a failed
    call into the caller's error)."""

    def __init__(self, handle: Any, resolve: Callable[[Any, str], Any]):
        self.handle, self.resolve = handle, resolve

    def __getattr__(self, method: str) -> Callable[..., Any]:
        remote = getattr(self.handle, method)

        def call(*args, **kwargs):
            return self.resolve(remote.remote(*args, **kwargs), f"the learner's {method}")

        return call


class TrainingDriver:
    """Drives ``learner`` (a ``Learner`` or a ``RemoteLearner``) by the ``learner`` config section."""

    def __init__(self, learner: Any, lcfg: "LearnerSection"):
        self.learner, self.lcfg = learner, lcfg

    def start(self, fresh: bool) -> list[str]:
        """A fresh learner: fit the normalisation (unless ``learner.init_from`` brought it) and save
        the step-0 checkpoint. Returns the embodiments fitted."""
        if not fresh:
            return []
        fitted = [] if self.lcfg.init_from else self.learner.fit_mixture_normalization()
        self.learner.save_checkpoint()
        return fitted

    def start_round(self, round_index: int) -> None:
        """Synchronous rounds: before every round after the first, refit the normalisation on what
        the mixture's tables hold now when ``learner.refit_normalization`` asks for it."""
        if round_index and self.lcfg.refit_normalization:
            self.learner.fit_mixture_normalization()

    def train_to(self, target: int, *, on_chunk: Callable[[dict[str, Any]], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
        """Train in chunks ending on publish boundaries until step ``target`` (or until
        ``should_stop()`` says so after a chunk). Returns the losses of every step, the last
        chunk's mean loss, the step and version reached, and whether it stopped early."""
        status = self.learner.status()
        step, version, losses, loss, stopped = status["step"], status["version"], [], float("nan"), False
        while steps := chunk_steps(step, target, self.lcfg.publish_every):
            result = self.learner.train(steps)
            step, version, loss = result["step"], result["version"], result["loss"]
            losses += result["losses"]
            if on_chunk is not None:
                on_chunk(result)
            if should_stop is not None and should_stop():
                stopped = True
                break
        return {"losses": losses, "loss": loss, "step": step, "version": version, "stopped": stopped}

    def finish(self) -> dict[str, Any]:
        """Checkpoint and publish the current weights; the checkpoint's policy file and the version."""
        checkpoint = self.learner.save_checkpoint()
        return {"checkpoint": checkpoint, "version": self.learner.publish()}

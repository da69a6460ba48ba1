"""Errors of the model package."""


class CheckpointMismatchError(ValueError):
    """A checkpoint's tensors do not fit the model.

    Attributes:
        problems: one line per tensor: missing, unexpected, or "name: expected (..), got (..)".
    """

    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"{source}: tensors do not match the model: " + "; ".join(problems))

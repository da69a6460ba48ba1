"""What the loop's driver gets back from its Ray calls: results, or a LaunchError that says what failed."""

from __future__ import annotations

from typing import Any


class LaunchError(RuntimeError):
    """The loop cannot start or continue; the message says what to do."""


def ray_call(ref_or_refs, what: str) -> Any:
    """ray.get with the remote error's message turned into a LaunchError naming ``what`` failed."""
    import ray

    try:
        return ray.get(ref_or_refs)
    except ray.exceptions.RayError as exc:
        cause = getattr(exc, "cause", None) or exc
        raise LaunchError(f"{what} failed: {type(cause).__name__}: {cause}".splitlines()[0][:2000]) from None

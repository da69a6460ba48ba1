"""External tools some tests run (kubectl's kustomize, promtool, prometheus, redis-server, a local Ray cluster)."""

import contextlib
import os
import shutil
from collections.abc import Iterator

import pytest

RAY_START_TRIES = 3
"""Times ``local_ray`` starts a local Ray cluster before it gives up."""


def require_tool(name: str, hint: str) -> str:
    """The tool's path; without it the test fails under CI (CI=true) and is skipped elsewhere."""
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} not found on PATH: {hint}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@contextlib.contextmanager
def local_ray(num_cpus: int, env_vars: dict[str, str] | None = None) -> Iterator[None]:
    """This process as the driver of a local Ray cluster of ``num_cpus``, shut down afterwards.

    ``ray.init`` starts the GCS, raylet and dashboard through a ``preexec_fn`` (Python code between
    fork and exec): in a pytest process holding earlier tests' gRPC threads that has aborted them
    (SIGABRT, no log written) and Ray then waits a fixed 30 s before "The current node timed out
    during startup". One more try starts them afresh."""
    import ray

    for attempt in range(RAY_START_TRIES):
        try:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": env_vars or {}})
            break
        except Exception as exc:
            ray.shutdown()
            if attempt == RAY_START_TRIES - 1 or "timed out during startup" not in str(exc):
                raise
    try:
        yield
    finally:
        ray.shutdown()

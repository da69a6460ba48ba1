"""External tools some tests run (kubectl's kustomize, promtool, prometheus, redis-server)."""

import os
import shutil

import pytest


def require_tool(name: str, hint: str) -> str:
    """The tool's path; without it the test fails under CI (CI=true) and is skipped elsewhere."""
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} not found on PATH: {hint}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)

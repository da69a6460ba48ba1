"""The checked-in gRPC modules are exactly what the .proto files generate."""

import shutil
from pathlib import Path

from fleetloop.protos.generate import PROTOS_DIR, generate


def test_regenerating_changes_nothing(tmp_path: Path):
    for proto in PROTOS_DIR.glob("*.proto"):
        shutil.copy(proto, tmp_path / proto.name)
    written = generate(tmp_path)
    assert written
    for path in written:
        checked_in = PROTOS_DIR / path.name
        assert checked_in.read_bytes() == path.read_bytes(), f"{checked_in.name} is stale: run python -m fleetloop.protos.generate"

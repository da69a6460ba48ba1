"""Regenerate the checked-in gRPC modules from the ``*.proto`` files in this folder.

Run ``python -m fleetloop.protos.generate``. Each proto is compiled as
``fleetloop/protos/<name>.proto`` (its place in the import namespace), so protoc writes
``from fleetloop.protos import <name>_pb2`` into ``<name>_pb2_grpc.py`` and the descriptor
pool names the file uniquely.
"""

import logging
import shutil
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

logger = logging.getLogger(__name__)

PROTOS_DIR = Path(__file__).resolve().parent
PACKAGE_PATH = Path("fleetloop", "protos")


def generate(protos_dir: Path = PROTOS_DIR) -> list[Path]:
    """Compile every ``*.proto`` in ``protos_dir`` into ``_pb2.py``, ``_pb2.pyi`` and ``_pb2_grpc.py`` beside it.

    Returns:
        The generated files.

    Raises:
        RuntimeError: protoc failed or produced an unexpected import.
    """
    protos = sorted(protos_dir.glob("*.proto"))
    if not protos:
        raise RuntimeError(f"no .proto files in {protos_dir}")
    well_known = str(resources.files("grpc_tools") / "_proto")
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / PACKAGE_PATH).mkdir(parents=True)
        for proto in protos:
            shutil.copy(proto, root / PACKAGE_PATH / proto.name)
        args = [
            "grpc_tools.protoc",
            f"-I{root}",
            f"-I{well_known}",
            f"--python_out={root}",
            f"--pyi_out={root}",
            f"--grpc_python_out={root}",
            *(str(PACKAGE_PATH / proto.name) for proto in protos),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {[p.name for p in protos]}")
        for proto in protos:
            stem = proto.stem
            grpc_module = root / PACKAGE_PATH / f"{stem}_pb2_grpc.py"
            expected_import = f"from fleetloop.protos import {stem}_pb2"
            if expected_import not in grpc_module.read_text():
                raise RuntimeError(f"{grpc_module.name} lacks '{expected_import}'")
            for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
                target = protos_dir / f"{stem}{suffix}"
                shutil.copy(root / PACKAGE_PATH / f"{stem}{suffix}", target)
                written.append(target)
    for path in written:
        logger.info("wrote %s", path)
    return written


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    generate()


if __name__ == "__main__":
    main()

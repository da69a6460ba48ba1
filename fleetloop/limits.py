"""Size limits on untrusted input: files read whole and PNG images decoded.

Every file a role reads whole (configs, secrets, PEM files, dataset metadata, checkpoint indexes)
goes through :func:`read_limited`, every PNG from the wire or the replay through :func:`decode_png`.
Both check sizes before reading or decoding, and raise :class:`InputError` (or the caller's own
error type) naming the file or image and the limit. This module imports nothing of fleetloop, so
every package may use it.
"""

from __future__ import annotations

import io
import stat
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

MAX_IMAGE_PIXELS = 1 << 24
"""Largest image decoded: 16.8M pixels (e.g. 4096x4096, 48 MiB as RGB), twice a 4K frame and far above
the cameras here (64x64 to 1280x800). A PNG compresses about 1000:1, so without this limit a small
message or replay value could decode into gigabytes (a decompression bomb)."""


class InputError(ValueError):
    """Input refused before it was read or decoded; the message names the file or image and why."""


def check_file(path: Path, limit: int, error: type[Exception] = InputError) -> None:
    """Check that ``path`` is a regular file of at most ``limit`` bytes (not a device, a pipe or a
    directory, which a symlink could name).

    Raises:
        error: naming the file: missing, unreadable, not a regular file, or too large.
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        raise error(f"{path}: file is missing") from None
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{path}: not a regular file")
    if info.st_size > limit:
        raise error(f"{path}: {info.st_size} bytes exceed the limit of {limit} bytes for this file")


def read_limited(path: Path, limit: int, error: type[Exception] = InputError) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them.

    Args:
        error: the exception type raised, e.g. a caller's own ``DatasetError``.

    Raises:
        error: as :func:`check_file`, or the file grew past ``limit`` while read.
    """
    check_file(path, limit, error)
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc}") from exc
    if len(data) > limit:
        raise error(f"{path}: more than the limit of {limit} bytes for this file")
    return data


def check_image_size(height: int, width: int, what: str) -> None:
    """Raises InputError naming ``what`` when a ``height`` x ``width`` image exceeds MAX_IMAGE_PIXELS."""
    if height * width > MAX_IMAGE_PIXELS:
        raise InputError(f"{what}: {height}x{width} exceeds the limit of {MAX_IMAGE_PIXELS} pixels")


def decode_png(data: bytes, what: str, size: tuple[int, int] | None = None) -> np.ndarray:
    """The writable (height, width, 3) uint8 RGB image of the PNG ``data``.

    The header is checked before any pixel is decoded: it must declare ``size`` (height, width) when
    given, and at most MAX_IMAGE_PIXELS.

    Raises:
        InputError: naming ``what``: not a readable PNG, another size, or too many pixels.
    """
    import numpy as np  # import on use: readers of files need no imaging
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as png:  # reads the header only
            width, height = png.size
            if size is not None and (height, width) != tuple(size):
                raise InputError(f"{what}: PNG header says {height}x{width}, expected {size[0]}x{size[1]}")
            check_image_size(height, width, what)
            return np.array(png if png.mode == "RGB" else png.convert("RGB"))
    except InputError:
        raise
    except (OSError, SyntaxError, EOFError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"{what}: not a readable PNG: {exc}") from None

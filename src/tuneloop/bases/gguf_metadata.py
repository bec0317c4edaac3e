"""A GGUF file's metadata (architecture, sizes, license, chat template) read in milliseconds.

``gguf.GGUFReader`` builds a numpy view for every element of every array, which for a 262k-token
vocabulary (Gemma 3) takes 15-25 s on this machine; the few keys tuneloop asks for (``general.*``, the
architecture's sizes) sit beside those arrays. This reader walks the key-value section once, keeps scalars
and strings, and steps over arrays (the vocabulary, scores, merges) unless asked for one.
The layout is the GGUF spec's (versions 2 and 3): magic, version, tensor count, key-value count, then each
key (a length-prefixed string), its value type and its value, all little-endian.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Container
from pathlib import Path
from typing import Any

from tuneloop.errors import TuneloopError

_STRING, _ARRAY = 8, 9
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8", 11: "<i8", 12: "<f8"}


def read_gguf_metadata(path: Path, *, arrays: Container[str] = ()) -> dict[str, Any]:
    """Every key of the file's metadata with its value; arrays only for the keys in ``arrays`` (as lists).

    Raises TuneloopError (naming the file) for a file that is not GGUF v2/v3 or ends early.
    """
    try:
        with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as blob:
            return _read(blob, arrays)
    except (OSError, struct.error, ValueError, UnicodeDecodeError) as exc:
        raise TuneloopError(
            f"not a readable GGUF file ({exc})", where=str(path), hint="check the file is complete"
        ) from None


def _read(blob: mmap.mmap, arrays: Container[str]) -> dict[str, Any]:
    import numpy as np

    if blob[:4] != b"GGUF":
        raise ValueError("no GGUF magic")
    version, _tensors, count = struct.unpack_from("<IQQ", blob, 4)
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version}")
    pos = 24
    values: dict[str, Any] = {}

    def string(at: int) -> tuple[str, int]:
        (size,) = struct.unpack_from("<Q", blob, at)
        return blob[at + 8 : at + 8 + size].decode("utf-8"), at + 8 + size

    for _ in range(count):
        key, pos = string(pos)
        (kind,) = struct.unpack_from("<I", blob, pos)
        pos += 4
        if kind == _STRING:
            values[key], pos = string(pos)
        elif kind in _SCALARS:
            (values[key],) = struct.unpack_from(_SCALARS[kind], blob, pos)
            pos += struct.calcsize(_SCALARS[kind])
        elif kind == _ARRAY:
            element, length = struct.unpack_from("<IQ", blob, pos)
            pos += 12
            if element in _NUMPY:
                dtype = np.dtype(_NUMPY[element])
                if key in arrays:
                    values[key] = np.frombuffer(blob, dtype=dtype, count=length, offset=pos).tolist()
                pos += dtype.itemsize * length
            elif element == _STRING:
                items = []
                for _ in range(length):  # each element is length-prefixed: walked, decoded only when asked
                    (size,) = struct.unpack_from("<Q", blob, pos)
                    if key in arrays:
                        items.append(blob[pos + 8 : pos + 8 + size].decode("utf-8", errors="replace"))
                    pos += 8 + size
                if key in arrays:
                    values[key] = items
            else:
                raise ValueError(f"{key}: arrays of type {element} are not read")
        else:
            raise ValueError(f"{key}: unknown value type {kind}")
    return values

"""Reading numpy-array pickles (the official CIFAR python batches) without trusting pickle.

A plain ``pickle.load`` calls whatever the file names (``os.system``, ``builtins.exec``...), so
a hostile batch would run code. This reader resolves no real global at all. It accepts only
the names a numpy-array pickle uses, ``numpy.core.multiarray._reconstruct`` (or
``numpy._core...``), ``numpy.ndarray``, ``numpy.dtype``, plus ``_codecs.encode`` (how Python 3
protocol-2 pickles spell bytes), and maps each to a stand-in defined here, never to the real
function. The stand-ins only record their arguments; an array is built afterwards with
``np.frombuffer`` from a checked dtype (plain integers, never ``object``), a checked shape and
exactly the right number of bytes. Any other name raises, before anything is called.
"""

from __future__ import annotations

import math
import pickle
from typing import IO, Any

import numpy as np

RECONSTRUCT = {
    ("numpy.core.multiarray", "_reconstruct"),  # numpy 1.x, and the real Python 2 batches
    ("numpy._core.multiarray", "_reconstruct"),  # numpy 2.x
}
ALLOWED_DTYPES = frozenset({"u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8"})
MAX_NDIM = 4


class RefusedPickle(pickle.UnpicklingError):
    """The file is not a plain numpy-array pickle; nothing in it was run."""


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("latin1")
    if isinstance(value, str):
        return value
    raise RefusedPickle(f"expected a string, got {type(value).__name__}")


class _NDArrayName:
    """Stands in for ``numpy.ndarray``; only valid as the first argument of _reconstruct."""

    __slots__ = ()


_NDARRAY = _NDArrayName()


class _DType:
    __slots__ = ("spec", "byteorder")

    def __init__(self, spec: Any):
        self.spec = _text(spec)
        if self.spec not in ALLOWED_DTYPES:
            raise RefusedPickle(f"refused dtype {self.spec!r} (only plain integer arrays)")
        self.byteorder = "="

    def __setstate__(self, state: Any) -> None:
        # numpy's dtype state: (version, byteorder, subarray, names, fields, elsize, align, ...)
        if not isinstance(state, tuple) or len(state) < 5 or any(s is not None for s in state[2:5]):
            raise RefusedPickle("refused dtype state (only plain integer dtypes)")
        byteorder = _text(state[1])
        if byteorder not in ("|", "<", ">", "="):
            raise RefusedPickle(f"refused dtype byte order {byteorder!r}")
        self.byteorder = byteorder

    def resolve(self) -> np.dtype:
        dtype = np.dtype(self.spec)
        return dtype if self.byteorder == "|" else dtype.newbyteorder(self.byteorder)


class _Array:
    __slots__ = ("array",)

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        # numpy's ndarray state: ([version,] shape, dtype, is_fortran, raw bytes)
        if isinstance(state, tuple) and len(state) == 5:
            state = state[1:]
        if not isinstance(state, tuple) or len(state) != 4:
            raise RefusedPickle("refused array state")
        shape, dtype, fortran, raw = state
        if not isinstance(dtype, _DType) or not isinstance(shape, tuple) or len(shape) > MAX_NDIM:
            raise RefusedPickle("refused array state")
        if not all(isinstance(side, int) and side >= 0 for side in shape):
            raise RefusedPickle(f"refused array shape {shape!r}")
        data = raw.encode("latin1") if isinstance(raw, str) else raw
        resolved = dtype.resolve()
        if not isinstance(data, bytes) or len(data) != math.prod(shape) * resolved.itemsize:
            raise RefusedPickle(f"array data does not match shape {shape} and dtype {resolved}")
        order = "F" if fortran else "C"
        self.array = np.frombuffer(data, dtype=resolved).reshape(shape, order=order).copy()


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        # Bound methods and slot-only stand-ins: a pickle cannot set attributes on them.
        if (module, name) in RECONSTRUCT:
            return self._reconstruct
        if (module, name) == ("numpy", "ndarray"):
            return _NDARRAY
        if (module, name) == ("numpy", "dtype"):
            return self._dtype
        if (module, name) == ("_codecs", "encode"):
            return self._encode
        raise RefusedPickle(f"refused pickle global '{module}.{name}'")

    def _reconstruct(self, subtype: Any, shape: Any, typecode: Any) -> _Array:
        if subtype is not _NDARRAY:
            raise RefusedPickle("refused array subtype (only numpy.ndarray)")
        return _Array()

    def _dtype(self, spec: Any, align: Any = False, copy: Any = False) -> _DType:
        return _DType(spec)

    def _encode(self, text: Any, encoding: Any = "latin1") -> bytes:
        if not isinstance(text, str) or encoding != "latin1":
            raise RefusedPickle("refused _codecs.encode call (only latin1 text to bytes)")
        return text.encode("latin1")


def _realise(value: Any) -> Any:
    if isinstance(value, _Array):
        if value.array is None:
            raise RefusedPickle("array without data")
        return value.array
    if isinstance(value, list):
        return [_realise(item) for item in value]
    if isinstance(value, (_DType, _NDArrayName)):
        raise RefusedPickle("stray numpy object outside an array")
    return value


def load_array_dict(handle: IO[bytes]) -> dict[str, Any]:
    """Load a pickled dict of numpy integer arrays, lists, strings and numbers.

    Keys come back as str whether the file stored them as Python 2 strings or as bytes.
    Raises RefusedPickle (or another exception from the malformed stream) on anything else.
    """
    # latin1 is how numpy and torchvision read Python 2 pickles: byte strings map 1:1.
    loaded = _Unpickler(handle, encoding="latin1").load()
    if not isinstance(loaded, dict):
        raise RefusedPickle(f"expected a dict at the top level, got {type(loaded).__name__}")
    return {_text(key): _realise(value) for key, value in loaded.items()}

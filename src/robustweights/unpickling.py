"""The safe unpickler of CIFAR-10 batches: only numpy's array reconstruction, checked.

A pickle can run any code it names, and data may come from strangers: this
unpickler admits only the globals an honest CIFAR-10 batch names, rebuilds arrays
from plain number dtypes only, and lets no array claim more bytes than the file holds.
"""

from __future__ import annotations

import io
import math
import operator
import pickle

import numpy as np

from .errors import UserError, one_line, short_repr

try:  # numpy >= 2; numpy.core is a deprecated alias there and warns on import
    from numpy._core.multiarray import _reconstruct as numpy_reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct as numpy_reconstruct

# The only globals an honest CIFAR-10 pickle names, each the name of a checking
# method of _SafeUnpickler: numpy's array reconstruction (under its numpy 1 and
# numpy 2 module names) and _codecs.encode, which Python 3 uses to write bytes at protocol 2.
_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): "_reconstruct",
    ("numpy._core.multiarray", "_reconstruct"): "_reconstruct",
    ("numpy", "ndarray"): "_ndarray",
    ("numpy", "dtype"): "_dtype",
    ("_codecs", "encode"): "_encode",
}
MAX_PICKLED_ARRAYS = 16  # an honest batch holds one array


def _number_type(name) -> np.dtype:
    """A dtype a pickle names: a plain bool, integer or float type, nothing that holds objects
    or sizes."""
    name = name.decode("ascii") if isinstance(name, bytes) else name
    dt = np.dtype(name) if isinstance(name, str) else None
    if dt is None or dt.kind not in "biuf":
        raise ValueError(f"dtype {short_repr(name)} is not a plain number type")
    return dt


class _PickledDtype:
    """What the pickle's ``numpy.dtype(...)`` gets: not a live dtype, because numpy lets a
    later BUILD rewrite a dtype's size and flags under the arrays that use it."""

    def __init__(self, name, align=False, copy=False):
        self.type, self.order = _number_type(name), "|"

    def __setstate__(self, state):  # honest: (3, '|', None, None, None, -1, -1, 0)
        order = state[1].decode("ascii") if isinstance(state[1], bytes) else state[1]
        if order not in ("<", ">", "=", "|") or any(s is not None for s in state[2:5]):
            raise ValueError("dtype state is not that of a plain number type")
        self.order = order

    def dtype(self) -> np.dtype:
        return self.type if self.order == "|" else self.type.newbyteorder(self.order)


class _PickledArray(np.ndarray):
    """An array being unpickled: its state (the pickle's BUILD) must be bytes of a
    ``_PickledDtype``, rebuilt here so that nothing in the pickle keeps a handle on the dtype."""

    def __setstate__(self, state):  # honest: (1, shape, dtype, is_fortran, data)
        if not (
            isinstance(state, tuple)
            and len(state) == 5
            and isinstance(state[2], _PickledDtype)
            and isinstance(state[4], bytes)
        ):
            raise ValueError("array state is not (version, shape, dtype, fortran, bytes)")
        super().__setstate__(state[:2] + (state[2].dtype(),) + state[3:])


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global outside ``_PICKLE_GLOBALS``.

    A pickle runs code only by naming a callable (``find_class``) and calling it;
    with the callables limited to checked array reconstruction a file from a stranger
    can at worst hand us wrong data, which the callers then validate. The arrays it
    builds may not claim more bytes than the file holds: an honest batch's pixels are
    bytes in the file, while a 227-byte pickle could ask for gigabytes.
    """

    def __init__(self, raw: bytes, where: str):
        super().__init__(io.BytesIO(raw), encoding="bytes")
        self.where, self.size, self.budget, self.arrays = where, len(raw), len(raw), 0

    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_GLOBALS:
            raise UserError(
                f"{self.where}: refuses to load global {module}.{name} "
                "(a CIFAR-10 batch holds only numpy arrays; this file may be malicious)"
            )
        return getattr(self, _PICKLE_GLOBALS[module, name])

    def _ndarray(self, *args):
        raise UserError(
            f"{self.where}: calls numpy.ndarray directly, as an honest batch never does "
            "(this file may be malicious)"
        )

    def _dtype(self, *args):
        return _PickledDtype(*args)

    def _encode(self, text, encoding="utf-8"):
        if not (isinstance(text, str) and encoding in ("latin1", "latin-1")):
            raise ValueError("_codecs.encode is admitted only to turn latin1 text into bytes")
        return text.encode("latin1")

    def _reconstruct(self, subtype, shape, dtype):
        # honest: (numpy.ndarray, (0,), b'b'), then BUILD
        dt = dtype.dtype() if isinstance(dtype, _PickledDtype) else _number_type(dtype)
        shape = shape if isinstance(shape, tuple) else (shape,)
        self.arrays += 1
        if subtype != self._ndarray or len(shape) > 32 or self.arrays > MAX_PICKLED_ARRAYS:
            raise ValueError("not the array reconstruction numpy writes")
        dims = tuple(min(operator.index(d), 2**64) for d in shape)
        nbytes = math.prod(dims) * dt.itemsize
        if nbytes > self.budget:
            raise UserError(
                f"{self.where}: claims an array of {nbytes:,} bytes in a file of {self.size:,} "
                "(an honest batch's pixels are bytes in the file; this file may be malicious)"
            )
        self.budget -= max(nbytes, 0)
        return numpy_reconstruct(_PickledArray, dims, dt)


def unpickle(raw: bytes, where: str) -> dict:
    """The dict a CIFAR-10 pickle ``raw`` holds (keys as text, arrays as numpy arrays), read
    with :class:`_SafeUnpickler`; anything wrong is one UserError line naming ``where``."""
    try:
        obj = _SafeUnpickler(raw, where).load()
    except UserError:
        raise
    except Exception as e:  # anything else going wrong inside an untrusted pickle: the file's fault
        raise UserError(
            f"{where}: not a readable CIFAR-10 pickle, truncated or corrupt "
            f"({type(e).__name__}: {one_line(e)})"
        ) from None
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a pickled dict, found {type(obj).__name__}")
    # keys as text (a key not in UTF-8 is no key we look up); arrays as plain numpy arrays
    return {
        k.decode(errors="replace") if isinstance(k, bytes) else k: v.view(np.ndarray)
        if isinstance(v, _PickledArray)
        else v
        for k, v in obj.items()
    }

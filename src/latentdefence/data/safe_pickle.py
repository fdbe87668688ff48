"""Unpickling published dataset files (MNIST's pickle, CIFAR's batches) without running arbitrary code."""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np

# numpy's array reconstructor, wherever this numpy keeps it (pickles name numpy.core or numpy._core)
_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(0))[0]
_ALLOWED: dict[tuple[str, str], object] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
}


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Admit the globals a pickled ndarray needs (plus plain dicts, lists, strings and numbers), nothing else."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: only NumPy arrays are allowed")


def load_numpy_pickle(blob: bytes, encoding: str = "latin1") -> Any:
    """The object in `blob`, refusing any global but NumPy's array constructors."""
    return NumpyOnlyUnpickler(io.BytesIO(blob), encoding=encoding).load()

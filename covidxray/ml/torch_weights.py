"""Read a PyTorch state dict saved in the legacy (non-zip) format, with numpy and no torch.

The file is a magic-number pickle, a protocol pickle, a system-info pickle, the state dict itself
(tensors refer to storages by persistent id), the list of storage keys, then each storage's element
count and raw little-endian bytes in that order. The unpickler below refuses every global but the few
that a plain state dict needs, so reading a file cannot run code.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_DTYPES: dict[str, type[np.generic]] = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ByteStorage": np.uint8,
}


class WeightsError(ValueError):
    """The weights file is unreadable, or does not match the network it is loaded into."""


class _Storage:
    """A storage named in the state dict, filled in once its bytes have been read."""

    def __init__(self, dtype: type[np.generic], numel: int):
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.numel = numel
        self.data: np.ndarray | None = None


class _Tensor:
    """A view on a storage: offset, shape and strides in elements."""

    def __init__(self, storage: _Storage, offset: int, shape: tuple[int, ...], stride: tuple[int, ...]):
        self.storage, self.offset, self.shape, self.stride = storage, offset, tuple(shape), tuple(stride)

    def array(self) -> np.ndarray:
        data = self.storage.data
        assert data is not None
        if self.shape and self.offset + sum(
            (n - 1) * s for n, s in zip(self.shape, self.stride, strict=True)
        ) >= len(data):
            raise WeightsError("a tensor reaches past the end of its storage")
        strides = tuple(s * data.itemsize for s in self.stride)
        view = np.lib.stride_tricks.as_strided(data[self.offset :], self.shape, strides, writeable=False)
        return np.array(view, dtype=data.dtype.newbyteorder("="))


def _rebuild_tensor(storage: _Storage, offset: int, shape: tuple, stride: tuple, *_: Any) -> _Tensor:
    return _Tensor(storage, offset, shape, stride)


class _StorageType:
    def __init__(self, name: str):
        self.name = name


class _Unpickler(pickle.Unpickler):
    """Builds only ordered dicts, tensors and storage markers; any other global is refused."""

    def __init__(self, stream: io.BufferedIOBase, storages: dict[str, _Storage]):
        super().__init__(stream)
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) in (("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor")):
            return _rebuild_tensor
        if module == "torch" and name in _DTYPES:
            return _StorageType(name)
        raise WeightsError(f"refusing to load {module}.{name} from a weights file")

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise WeightsError(f"unexpected persistent id {pid!r}")
        kind, key, numel = pid[1], str(pid[2]), int(pid[4])
        if not isinstance(kind, _StorageType):
            raise WeightsError("a storage of unknown type")
        if key not in self.storages:
            self.storages[key] = _Storage(_DTYPES[kind.name], numel)
        return self.storages[key]


def _safe_load(stream: io.BufferedIOBase) -> Any:
    """Unpickle one plain value (numbers, strings, dicts, lists): no globals at all."""
    return _Unpickler(stream, {}).load()


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Return the tensors of a legacy-format `.pth` state dict as numpy arrays, by name."""
    path = Path(path)
    stream = io.BytesIO(path.read_bytes())
    try:
        if _safe_load(stream) != MAGIC_NUMBER:
            raise WeightsError(f"{path} is not a PyTorch legacy-format file (wrong magic number)")
        _safe_load(stream)  # protocol version
        info = _safe_load(stream)
        if isinstance(info, dict) and not info.get("little_endian", True):
            raise WeightsError(f"{path} was written big-endian")
        storages: dict[str, _Storage] = {}
        state = _Unpickler(stream, storages).load()
        keys = _safe_load(stream)
        for key in keys:
            storage = storages[str(key)]
            (numel,) = struct.unpack("<q", _read(stream, 8))
            raw = _read(stream, numel * storage.dtype.itemsize)
            storage.data = np.frombuffer(raw, dtype=storage.dtype)
    except (pickle.UnpicklingError, EOFError, struct.error, KeyError, TypeError, AttributeError) as exc:
        raise WeightsError(f"{path} is damaged or truncated: {exc}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, _Tensor) for v in state.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors")
    if any(t.storage.data is None for t in state.values()):
        raise WeightsError(f"{path} is truncated: a tensor's storage is missing")
    return {name: tensor.array() for name, tensor in state.items()}


def _read(stream: io.BytesIO, n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise WeightsError("the file ends inside a tensor's data (truncated)")
    return data

#!/usr/bin/env python3
"""Converts resemblyzer 0.1.4's `pretrained.pt` (GE2E speaker encoder) to safetensors.

Standard library only: no torch, no numpy. `pretrained.pt` is PyTorch's legacy (pre-1.6,
non-zip) serialization, a concatenation of:

  1. a pickle of the magic number 0x1950a86a20f9469cfc6c,
  2. a pickle of the protocol version (1001),
  3. a pickle of the system info (endianness, type sizes),
  4. the pickle of the object itself, where each tensor is
     `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` and each storage a
     persistent id `('storage', torch.FloatStorage, key, location, numel, view_metadata)`,
  5. a pickle of the list of storage keys, in the order the storages follow,
  6. for each storage: its element count as 8 bytes little-endian, then the raw elements.

Only `checkpoint["model_state"]` entries that the encoder uses (lstm.*, linear.*) are written,
as contiguous little-endian f32 in safetensors format: an 8-byte little-endian header length,
a JSON header {name: {dtype, shape, data_offsets}}, then the data.

Usage: convert_ge2e.py pretrained.pt out.safetensors
"""

import json
import pickle
import struct
import sys

MAGIC = 0x1950A86A20F9469CFC6C
KEEP_PREFIXES = ("lstm.", "linear.")


class FloatStorage:
    """Stands in for torch.FloatStorage: only its identity matters."""

    element_size = 4
    fmt = "f"


class StorageRef:
    def __init__(self, key, numel):
        self.key = key
        self.numel = numel
        self.data = None  # bytes, filled in once the storages are read


class TensorRef:
    def __init__(self, storage, offset, size, stride):
        self.storage = storage
        self.offset = offset
        self.size = tuple(size)
        self.stride = tuple(stride)


def rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, hooks=None, *rest):
    return TensorRef(storage, storage_offset, size, stride)


class OrderedDictStub(dict):
    pass


class LegacyUnpickler(pickle.Unpickler):
    def __init__(self, f):
        super().__init__(f)
        self.storages = {}

    def find_class(self, module, name):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return rebuild_tensor_v2
        if (module, name) == ("torch", "FloatStorage"):
            return FloatStorage
        if (module, name) == ("collections", "OrderedDict"):
            import collections

            return collections.OrderedDict
        raise pickle.UnpicklingError(f"unexpected global {module}.{name} in the checkpoint")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid[:5]
        if storage_type is not FloatStorage:
            raise pickle.UnpicklingError(f"storage {key}: only FloatStorage is supported")
        if len(pid) > 5 and pid[5] is not None:
            raise pickle.UnpicklingError(f"storage {key}: storage views are not supported")
        ref = self.storages.get(key)
        if ref is None:
            ref = self.storages[key] = StorageRef(key, numel)
        return ref


class PlainUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"unexpected global {module}.{name}")


def load_legacy(path):
    with open(path, "rb") as f:
        if PlainUnpickler(f).load() != MAGIC:
            raise ValueError(f"{path}: not a legacy PyTorch file (bad magic number)")
        protocol = PlainUnpickler(f).load()
        if protocol != 1001:
            raise ValueError(f"{path}: unsupported protocol version {protocol}")
        info = PlainUnpickler(f).load()
        if not info.get("little_endian", False):
            raise ValueError(f"{path}: big-endian checkpoints are not supported")
        up = LegacyUnpickler(f)
        obj = up.load()
        keys = PlainUnpickler(f).load()
        for key in keys:
            (numel,) = struct.unpack("<q", f.read(8))
            ref = up.storages.get(key)
            nbytes = numel * FloatStorage.element_size
            data = f.read(nbytes)
            if len(data) != nbytes:
                raise ValueError(f"{path}: truncated in storage {key}")
            if ref is not None:
                if ref.numel != numel:
                    raise ValueError(f"storage {key}: {numel} elements, pickle said {ref.numel}")
                ref.data = data
    return obj


def contiguous_bytes(t):
    """The tensor's elements in row-major order, as little-endian f32 bytes."""
    n = 1
    for d in t.size:
        n *= d
    expected = []
    acc = 1
    for d in reversed(t.size):
        expected.insert(0, acc)
        acc *= d
    if t.storage.data is None:
        raise ValueError(f"storage {t.storage.key} was not in the file")
    if list(t.stride) == expected or n == 0:
        return t.storage.data[t.offset * 4 : (t.offset + n) * 4]
    # Strided: gather element by element.
    src = memoryview(t.storage.data).cast("f")
    out = []

    def walk(dim, base):
        if dim == len(t.size):
            out.append(src[base])
            return
        for i in range(t.size[dim]):
            walk(dim + 1, base + i * t.stride[dim])

    walk(0, t.offset)
    return struct.pack(f"<{len(out)}f", *out)


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    src, dst = argv[1], argv[2]
    checkpoint = load_legacy(src)
    state = checkpoint["model_state"]
    header = {"__metadata__": {"source": "resemblyzer==0.1.4 resemblyzer/pretrained.pt",
                               "format": "pt"}}
    blobs = []
    offset = 0
    for name in sorted(state):
        if not name.startswith(KEEP_PREFIXES):
            continue
        t = state[name]
        data = contiguous_bytes(t)
        header[name] = {"dtype": "F32", "shape": list(t.size),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    header_bytes = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)  # align the data to 8 bytes
    tmp = dst + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for b in blobs:
            f.write(b)
    import os

    os.replace(tmp, dst)
    for name in sorted(k for k in header if k != "__metadata__"):
        print(f"{name}: {header[name]['shape']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

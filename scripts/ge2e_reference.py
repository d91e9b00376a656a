#!/usr/bin/env python3
"""DEV-ONLY: makes fixtures/reference/ge2e-clear.json, the embeddings that resemblyzer 0.1.4
itself (PyTorch) gives for fixed windows of fixtures/dialogues/clear.flac. The Rust encoder's
test (tests/speaker_encoder.rs) compares against it. Not run by scripts/test.sh or CI: it needs
torch, librosa and soundfile, e.g. in a throwaway venv:

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch librosa soundfile webrtcvad-wheels
    /tmp/refvenv/bin/pip install --no-deps resemblyzer==0.1.4
    /tmp/refvenv/bin/python scripts/ge2e_reference.py > fixtures/reference/ge2e-clear.json

For each window, exactly what src/speakers/embed does: samples [start, start+len) of the 16 kHz
file (int16 / 32768), `audio.normalize_volume(w, -30, increase_only=True)`, then
`VoiceEncoder.embed_utterance(w)` (partials of 160 frames at rate 1.3, min_coverage 0.75, each
partial L2-normalised, averaged, L2-normalised again). No VAD trimming (`preprocess_wav` would
also run webrtcvad over the whole file; the Rust encoder embeds the windows it is given).
Digital silence is not among the windows: resemblyzer's normalize_volume turns it into NaN
(log10(0)), where the Rust encoder leaves it as it is.
"""

import json
import sys
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf
import torch

import resemblyzer
from resemblyzer import VoiceEncoder, audio

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "fixtures" / "dialogues" / "clear.flac"

# (start sample, length in samples, who speaks there per clear.rttm)
WINDOWS = [
    (14_400, 25_600, "coach"),   # 0.90-2.50 s
    (64_000, 25_600, "client"),  # 4.00-5.60 s
    (96_000, 25_600, "client"),  # 6.00-7.60 s
    (72_000, 51_200, "client"),  # 4.50-7.70 s: 3.2 s, three partials
    (156_800, 12_800, "coach"),  # 9.80-10.60 s: 0.8 s, zero-padded to one partial
    (40_000, 16_000, "coach"),   # 2.50-3.50 s: the coach's turn ends at 2.92 s, then a pause
]


def main():
    wav, sr = sf.read(str(FIXTURE), dtype="float32")
    assert sr == 16_000 and wav.ndim == 1, (sr, wav.shape)
    torch.set_num_threads(1)
    encoder = VoiceEncoder("cpu", verbose=False)
    out = []
    for start, length, who in WINDOWS:
        w = wav[start : start + length].astype(np.float32)
        raw_sum = float(np.sum(w.astype(np.float64)))
        w = audio.normalize_volume(w, -30, increase_only=True).astype(np.float32)
        e = encoder.embed_utterance(w)
        out.append({
            "start": start,
            "len": length,
            "speaker": who,
            "sample_sum": raw_sum,
            "embedding": [round(float(v), 7) for v in e],
        })
    json.dump({
        "model": "ge2e-resemblyzer-0.1.4",
        "fixture": "fixtures/dialogues/clear.flac",
        "made_by": "scripts/ge2e_reference.py",
        "versions": {
            "torch": torch.__version__,
            "librosa": librosa.__version__,
            "numpy": np.__version__,
            "resemblyzer": getattr(resemblyzer, "__version__", "0.1.4"),
        },
        "windows": out,
    }, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The original (seed) design's preprocessing, verbatim in spirit, as the baseline that
scripts/bench-e2e.sh measures with /usr/bin/time -v:

    AudioSegment.from_file -> set_frame_rate(16000) -> set_channels(1) -> normalize -> export WAV

pydub decodes the whole recording through an ffmpeg subprocess into one in-memory PCM buffer
(48 kHz here), then every step makes a full copy, so time and memory grow with the recording.

Usage: pydub_preprocess.py INPUT OUTPUT.wav
Prints one JSON line: the output's duration and each step's wall seconds (the ffmpeg child's
time is inside "load"; /usr/bin/time counts its CPU and the larger of the two peak RSS values).
"""

import json
import sys
import time

from pydub import AudioSegment, effects


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    src, dst = sys.argv[1], sys.argv[2]
    steps = {}
    t = time.perf_counter()

    def step(name):
        nonlocal t
        now = time.perf_counter()
        steps[name] = round(now - t, 3)
        t = now

    audio = AudioSegment.from_file(src)
    step("load")
    audio = audio.set_frame_rate(16000)
    step("set_frame_rate")
    audio = audio.set_channels(1)
    step("set_channels")
    audio = effects.normalize(audio)
    step("normalize")
    audio.export(dst, format="wav")
    step("export")
    print(
        json.dumps(
            {
                "duration_s": round(len(audio) / 1000.0, 3),
                "frame_rate": audio.frame_rate,
                "channels": audio.channels,
                "steps_s": steps,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

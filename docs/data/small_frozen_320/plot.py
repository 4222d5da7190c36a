"""PCC per dimension of the small backbone calibrated 320 steps with the Whisper encoder trained vs frozen.

    .venv/bin/python docs/data/small_frozen_320/plot.py   # writes docs/data/small_frozen_320/trainable_vs_frozen.png

The frozen run's metrics are this folder's metrics.json (`sqrl eval` of runs/small/calibration_frozen). The
trainable 320-step run's eval (2026-12-02) was lost with its run folder; its per-dimension PCCs are the ones
docs/small.md ("First result") recorded from it.
"""
import json
from pathlib import Path

from sqrl.plots import pcc_bars

HERE = Path(__file__).parent
TRAINABLE_320 = {  # docs/small.md, "First result (2026-12-02, one run, seed 0)": greedy, expected
    "speed": (0.908, 0.940), "naturalness": (0.103, 0.296), "noise": (0.542, 0.713), "distortion": (0.084, 0.478),
    "listening_effort": (0.690, 0.713), "continuity": (0.778, 0.887), "overall": (0.676, 0.694), "mean": (0.479, 0.630)}
frozen = json.loads((HERE / "metrics.json").read_text())
pcc_bars({"encoder trained, greedy": {d: v[0] for d, v in TRAINABLE_320.items()},
          "encoder frozen, greedy": frozen["pcc"],
          "encoder trained, expected": {d: v[1] for d, v in TRAINABLE_320.items()},
          "encoder frozen, expected": frozen["expected"]["pcc"]},
         HERE / "trainable_vs_frozen.png",
         title="small-qwen2-audio, 320 calibration steps: Whisper tiny.en trained vs frozen (300 test clips)")

"""The four training clips the fixed-clip GRPO run trains on at every step (overall 4, 2, 5, 1), their audio
paths made absolute, into data/fixed4/train.jsonl:  python docs/data/small_grpo_fixed4/make_manifest.py"""
import json
from pathlib import Path

CORPUS = Path("data/synth/synth-v1-n2000-s0-sr16000").resolve()
IDS = ["syn0-00000", "syn0-00001", "syn0-00003", "syn0-00004"]
rows = {r["id"]: r for r in map(json.loads, open(CORPUS / "train.jsonl"))}
out = Path("data/fixed4/train.jsonl")
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text("".join(json.dumps({**rows[i], "audio": str(CORPUS / rows[i]["audio"])}) + "\n" for i in IDS))
print(out)

"""QualiSpeech import: intervals parsed out of free text, odd scores repaired and counted, no row lost."""
import csv

import numpy as np
import pytest
import soundfile as sf

from sqrl.data.qualispeech import ParsedArtifact, import_qualispeech, parse_artifact_text, parse_score
from sqrl.schema import read_manifest

HEADER = ["id", "Speed", "Naturalness", "Background noise", "Distortion", "Listening effort", "Continuity",
          "Overall quality", "Feeling of voice", "Noise Description", "Distortion description",
          "Unnatural pause", "Natural language description"]


def P(text, start, end):
    return ParsedArtifact(text, start, end)


@pytest.mark.parametrize("text,expected", [
    ("sound similar to wind in the audio from 0-1.7s", [P("Sound similar to wind", 0.0, 1.7)]),
    ("not noticeable", []),
    ("Not distorted", []),
    ("None", []),
    ("", []),
    (None, []),
    ("  N/A ", []),
    ("1.2 s to 1.5 s", [P("", 1.2, 1.5)]),
    ("wind noise from 0-1.7s and 2.5-3.0s", [P("Wind noise", 0.0, 1.7), P("Wind noise", 2.5, 3.0)]),
    ("hum from 0-1s, clicks at 2.1-2.3s", [P("Hum", 0.0, 1.0), P("Clicks", 2.1, 2.3)]),
    ("electrical noise between 1 and 2 seconds", [P("Electrical noise", 1.0, 2.0)]),
    ("From 0 to 1.7 s there is wind", [P("There is wind", 0.0, 1.7)]),
    ("static noise (0.0s - 2.34s)", [P("Static noise", 0.0, 2.34)]),
    ("crackling from 1.1s-1.4s; buzzing from 2s–3s.", [P("Crackling", 1.1, 1.4), P("Buzzing", 2.0, 3.0)]),
    ("noise 0,5-1,2s", [P("Noise", 0.5, 1.2)]),
    ("Pauses at 0.3s and 1.2s", [P("Pauses", 0.3, 0.3), P("Pauses", 1.2, 1.2)]),
    ("0.5~0.8 sec", [P("", 0.5, 0.8)]),
    ("slight hiss", [P("Slight hiss", None, None)]),
    ("50-60 Hz hum throughout the audio", [P("50-60 Hz hum", None, None)]),
    ("2-3 people talking in the background from 0.5 to 2 s", [P("2-3 people talking in the background", 0.5, 2.0)]),
    ("There is a pause 1.00-1.30 s.", [P("There is a pause", 1.0, 1.3)]),
])
def test_artifact_intervals_are_parsed_out_of_free_text(text, expected):
    assert parse_artifact_text(text) == expected


@pytest.mark.parametrize("raw,expected", [
    ("4", (4, None)), (" 3.0 ", (3, None)), ("3.5", (4, "rounded")), ("2,5", (3, "rounded")),
    ("2.4", (2, "rounded")), ("0", (1, "clamped")), ("7", (5, "clamped")), ("5.6", (5, "clamped")),
    ("", (None, "missing")), ("nan", (None, "missing")), (None, (None, "missing")), ("good", (None, "unparseable")),
    ("inf", (None, "unparseable")),
])
def test_scores_are_rounded_half_up_clamped_or_flagged(raw, expected):
    assert parse_score(raw) == expected


def _write_csv(path, rows, header=HEADER, bom=True):
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


@pytest.fixture
def qualispeech(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    sf.write(audio / "a1.wav", np.zeros(int(16000 * 3.0), dtype=np.float32), 16000)
    sf.write(audio / "b2.flac", np.zeros((int(22050 * 2.0), 2), dtype=np.float32), 22050)
    rows = [
        ["a1", "3", "4", "2", "5", "3", "4", "3", "calm, male", "sound similar to wind in the audio from 0-1.7s",
         "Not distorted", "not noticeable", "A calm male voice with wind noise at the start."],
        ["b2", "3.5", "0", "7", "4", "", "good", "3", "", "slight hiss throughout the audio",
         "muffled sound from 1.5 to 2.5 s", "pause at 0.4-0.9s, another 1.2 s to 1.5 s", "Muffled, with pauses."],
        ["missing_clip", "3", "3", "3", "3", "3", "3", "3", "", "None", "None", "None", ""],
    ]
    _write_csv(tmp_path / "qs.csv", rows)
    return tmp_path, audio


def test_import_keeps_every_row_and_counts_every_repair(qualispeech):
    root, audio = qualispeech
    summary = import_qualispeech(root / "qs.csv", audio, root / "out" / "qs.jsonl")
    assert summary.rows == summary.written == 3
    flags = summary.flags
    assert flags["score rounded"] == 1 and flags["score clamped"] == 2
    assert flags["score missing"] == 1 and flags["score unparseable"] == 1
    assert flags["audio file not found"] == 1
    assert flags["no time given, whole clip assumed"] == 1
    assert flags["interval after clip end, cut"] == 1
    assert flags["artifacts"] == 5
    assert "3 rows read, 3 records written" in summary.format()


def test_imported_records_round_trip_through_read_manifest(qualispeech):
    root, audio = qualispeech
    import_qualispeech(root / "qs.csv", audio, root / "qs.jsonl")
    a1, b2, missing = read_manifest(root / "qs.jsonl")
    assert a1.id == "a1" and a1.audio == str((audio / "a1.wav").resolve())
    assert a1.scores == {"speed": 3, "naturalness": 4, "noise": 2, "distortion": 5, "listening_effort": 3,
                         "continuity": 4, "overall": 3}
    assert [(x.kind, x.start, x.end, x.text) for x in a1.artifacts] == [("noise", 0.0, 1.7, "Sound similar to wind")]
    assert a1.description.startswith("A calm male voice") and a1.meta["feeling_of_voice"] == "calm, male"
    assert a1.voice == "calm, male"  # the voice line's reference
    assert "import_flags" not in a1.meta
    assert (b2.scores["speed"], b2.scores["naturalness"], b2.scores["noise"]) == (4, 1, 5)
    assert b2.scores["listening_effort"] is None and b2.scores["continuity"] is None
    # Whole-clip noise spans the 2.0 s file; the second pause (1.2-1.5) is inside, the distortion
    # interval (1.5-2.5) is cut at the clip's end and flagged.
    got = [(x.kind, x.start, x.end) for x in b2.artifacts]
    assert got == [("noise", 0.0, 2.0), ("distortion", 1.5, 2.0), ("unnatural_pause", 0.4, 0.9),
                   ("unnatural_pause", 1.2, 1.5)]
    assert [x.text for x in b2.artifacts][2:] == ["Pause", "Another"]
    assert len(b2.meta["import_flags"]) == 7
    assert missing.audio.endswith("missing_clip.wav") and missing.artifacts == []
    assert missing.description is None and len(missing.meta["import_flags"]) == 1
    assert missing.meta["import_flags"][0].startswith("audio file not found: ")


def test_header_is_matched_loosely_but_missing_columns_are_named(tmp_path):
    loose = [h.upper() + "  " for h in HEADER]
    _write_csv(tmp_path / "loose.csv", [["x", *["3"] * 7, "", "", "", "", ""]], header=loose, bom=False)
    assert import_qualispeech(tmp_path / "loose.csv", tmp_path, tmp_path / "l.jsonl").written == 1
    _write_csv(tmp_path / "bad.csv", [["x"]], header=[h for h in HEADER if h != "Continuity"])
    with pytest.raises(ValueError, match="missing column\\(s\\) continuity"):
        import_qualispeech(tmp_path / "bad.csv", tmp_path, tmp_path / "b.jsonl")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="empty CSV"):
        import_qualispeech(tmp_path / "empty.csv", tmp_path, tmp_path / "e.jsonl")

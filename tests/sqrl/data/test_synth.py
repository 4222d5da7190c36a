"""The synthetic corpus: labels and intervals are true of the audio, splits hold out voices and
sentences, output is deterministic, manifests round-trip, the cache is atomic."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sqrl.audio import resample
from sqrl.data import degrade
from sqrl.data.render import render_clip
from sqrl.data.report import snr_by_noise_score, snr_monotone
from sqrl.data.synth import (SynthConfig, corpus_dir, ensure_corpus, plan_corpus, split_sizes,
                             synthesize_corpus)
from sqrl.data.tts import Utterance, synthesize
from sqrl.dimensions import DIMENSIONS
from sqrl.data.labels import VOICE_ADVERB, VOICE_KIND
from sqrl.schema import ManifestError, read_manifest, record_from_dict

SR = 16000
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """300 clips of seed 0 rendered in memory (about 3 s): enough for every kind and level."""
    jobs, _ = plan_corpus(SynthConfig(out=tmp_path_factory.mktemp("unused"), num=300, seed=0, pesq=False))
    return [render_clip(job) for job in jobs]


def _only(clip, family):
    """True when ``family`` is the clip's only degradation (speed aside)."""
    deg = clip.record.meta["degradations"]
    return deg[family] is not None and all(v is None for k, v in deg.items() if k != family)


def test_every_dimension_spreads_over_all_five_scores(rendered):
    for dim in DIMENSIONS:
        assert {c.record.scores[dim] for c in rendered} == {1, 2, 3, 4, 5}, dim


def test_noise_score_falls_monotonically_with_measured_snr(rendered):
    table = snr_by_noise_score([c.record for c in rendered])
    assert sorted(table) == [1, 2, 3, 4] and snr_monotone(table)
    assert table[1]["max"] < table[2]["min"] < table[2]["max"] < table[3]["min"] < table[3]["max"] < table[4]["min"]


def test_measured_snr_matches_the_requested_one_against_an_independently_made_clean_source(rendered):
    noisy = [c for c in rendered if _only(c, "noise")][:6]
    assert len(noisy) >= 4
    for clip in noisy:
        meta = clip.record.meta
        wave, tts_sr = synthesize(Utterance(**meta["tts"]))  # the clean speech, made again from meta
        clean = resample(wave, tts_sr, SR)
        out = clip.wave
        assert len(out) == len(clean)
        gain = float(np.dot(out, clean) / np.dot(clean, clean))  # noise is uncorrelated with speech
        noise = meta["degradations"]["noise"]
        sl = degrade.span(SR, noise["start"], noise["end"], len(out))
        measured = degrade.snr_db(gain * clean[sl], out[sl] - gain * clean[sl])
        assert measured == pytest.approx(noise["snr_db"], abs=1.0), clip.record.id


def test_clipped_interval_is_really_clipped(rendered):
    clipped = [c for c in rendered if _only(c, "distortion")
               and c.record.meta["degradations"]["distortion"]["kind"] == "clipping"]
    assert clipped
    for clip in clipped:
        art = next(a for a in clip.record.artifacts if a.kind == "distortion")
        seg = np.abs(clip.wave[degrade.span(SR, art.start + 0.01, art.end - 0.01, len(clip.wave))])
        ref = np.abs(clip.clean[degrade.span(SR, art.start + 0.01, art.end - 0.01, len(clip.clean))])
        flat = np.mean(seg >= seg.max() * 0.9999)
        assert flat > 0.01 and flat > 20 * np.mean(ref >= ref.max() * 0.9999), clip.record.id


def test_pause_and_dropout_intervals_are_really_silent(rendered):
    gappy = [c for c in rendered if _only(c, "continuity")]
    kinds = {g["kind"] for c in gappy for g in c.record.meta["degradations"]["continuity"]["gaps"]}
    assert kinds == {"pause", "dropout"}
    for clip in gappy:
        arts = [a for a in clip.record.artifacts if a.kind == "unnatural_pause"]
        assert len(arts) == len(clip.record.meta["degradations"]["continuity"]["gaps"])
        for art in arts:
            inside = clip.wave[degrade.span(SR, art.start + 0.006, art.end - 0.006, len(clip.wave))]
            assert inside.size > 0.15 * SR and np.all(inside == 0.0), (clip.record.id, art)


def test_intervals_lie_inside_the_clip_and_whole_clip_artifacts_span_it(rendered):
    for clip in rendered:
        duration = len(clip.wave) / SR
        assert 1.0 < duration < 6.5
        for art in clip.record.artifacts:
            assert 0.0 <= art.start <= art.end <= duration + 0.005
        for fam in ("noise", "distortion"):
            p = clip.record.meta["degradations"][fam]
            if p and p["whole"]:
                art = next(a for a in clip.record.artifacts if a.kind == fam)
                assert art.start == 0.0 and art.end == pytest.approx(duration, abs=0.005)


def test_labels_agree_with_the_parameters_in_meta(rendered):
    for clip in rendered:
        deg, scores = clip.record.meta["degradations"], clip.record.scores
        assert scores["naturalness"] == (deg["naturalness"]["level"] if deg["naturalness"] else 5)
        assert scores["distortion"] == (deg["distortion"]["level"] if deg["distortion"] else 5)
        assert scores["speed"] == clip.record.meta["speed"]["level"]
        n_gaps = len(deg["continuity"]["gaps"]) if deg["continuity"] else 0
        assert len([a for a in clip.record.artifacts if a.kind == "unnatural_pause"]) == n_gaps
        assert (scores["noise"] == 5) == (deg["noise"] is None)
        nat = deg["naturalness"]
        assert clip.record.voice == ("natural" if nat is None else
                                     f"{VOICE_ADVERB[nat['level']]} {VOICE_KIND[nat['kind']]}")


def test_plan_holds_out_voices_and_sentences():
    jobs, _ = plan_corpus(SynthConfig(out="unused", num=200, seed=3))
    train = [j for j in jobs if j["split"] == "train"]
    test = [j for j in jobs if j["split"] == "test"]
    assert (len(train), len(test)) == split_sizes(200, 0.15) == (170, 30)
    voices = lambda js: {j["utterance"]["voice"] for j in js}  # noqa: E731
    sentences = lambda js: {j["sentence_id"] for j in js}  # noqa: E731
    assert voices(train).isdisjoint(voices(test)) and sentences(train).isdisjoint(sentences(test))
    assert len(voices(train)) > 50 and len(sentences(test)) == 30


def test_split_sizes_keep_at_least_one_clip_on_each_side():
    assert split_sizes(1, 0.15) == (1, 0)
    assert split_sizes(2, 0.15) == (1, 1)
    assert split_sizes(10, 0.0) == (10, 0)
    assert split_sizes(10, 0.99) == (1, 9)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("c") / "corpus"
    summary = synthesize_corpus(SynthConfig(out=out, num=8, seed=5, workers=1))
    return out, summary


def test_corpus_manifests_round_trip_through_read_manifest(corpus):
    out, summary = corpus
    train, test = read_manifest(out / "train.jsonl"), read_manifest(out / "test.jsonl")
    assert (len(train), len(test)) == (summary.n_train, summary.n_test) == (7, 1)
    for rec in train + test:
        info = sf.info(rec.audio)
        assert info.samplerate == SR and info.channels == 1
        assert rec.meta["duration"] == pytest.approx(info.frames / SR, abs=1e-3)
        assert rec.description and rec.meta["sentence_id"] and rec.meta["clean_source"].startswith("espeak-ng:")
        assert 1.0 <= rec.meta["pesq"] <= 4.65
    raw = json.loads((out / "train.jsonl").read_text().splitlines()[0])
    assert raw["audio"].startswith("wav/")  # relative, so the folder can move
    assert raw["voice"] == train[0].voice and raw["voice"]


def test_a_manifest_written_before_the_voice_field_gets_it_from_the_degradation_in_meta(corpus, tmp_path):
    out, _ = corpus
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    voices = [row.pop("voice") for row in rows]
    old = tmp_path / "old.jsonl"
    old.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert [r.voice for r in read_manifest(old, resolve_audio=False)] == voices
    # only the synthetic corpus's own meta is read so: another source's "degradations" is left alone
    rows[0]["meta"]["generator"] = "someone else"
    assert record_from_dict(rows[0]).voice is None
    # a voice written in the manifest wins, and a bad one is an error that names the field
    rows[0]["voice"] = "hoarse"
    assert record_from_dict(rows[0]).voice == "hoarse"
    for broken in ("two\nlines", "two\rlines", "two\u2028lines"):  # any break render would write as two lines
        rows[0]["voice"] = broken
        with pytest.raises(ManifestError, match="voice"):
            record_from_dict(rows[0])
    rows[0]["voice"] = "two\nlines"
    with pytest.raises(ManifestError, match="voice"):
        record_from_dict(rows[0])
    # a synthetic record whose degradation is not one of the corpus's is an error, not a quiet missing voice
    rows[1].pop("voice", None)
    rows[1]["meta"]["degradations"]["naturalness"] = {"kind": "shouting", "level": 2}
    with pytest.raises(ManifestError, match="meta.degradations.naturalness.*shouting"):
        record_from_dict(rows[1])


def test_corpus_readme_reports_rules_histograms_and_sanity_figures(corpus):
    out, _ = corpus
    readme = (out / "README.md").read_text()
    for needle in ("## Label rules", "| listening_effort |", "mean SNR", "PESQ", "figures/histograms.png"):
        assert needle in readme
    assert (out / "figures" / "histograms.png").stat().st_size > 1000
    assert (out / "figures" / "label_sanity.png").stat().st_size > 1000
    stats = json.loads((out / "stats.json").read_text())
    assert stats["n"] == 8 and stats["shared_speakers"] == 0 and stats["shared_sentences"] == 0
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".corpus.tmp")]


def test_same_seed_gives_identical_corpora_with_one_or_two_workers(corpus, tmp_path):
    out, _ = corpus
    other = tmp_path / "again"
    synthesize_corpus(SynthConfig(out=other, num=8, seed=5, workers=2))
    assert (other / "train.jsonl").read_bytes() == (out / "train.jsonl").read_bytes()
    for wav in sorted((out / "wav").iterdir()):
        assert (other / "wav" / wav.name).read_bytes() == wav.read_bytes(), wav.name
    different = tmp_path / "seed6"
    synthesize_corpus(SynthConfig(out=different, num=8, seed=6, workers=1, pesq=False))
    assert (different / "train.jsonl").read_bytes() != (out / "train.jsonl").read_bytes()


def test_synthesize_refuses_a_non_empty_out_unless_overwrite(corpus):
    out, _ = corpus
    with pytest.raises(FileExistsError, match="--overwrite"):
        synthesize_corpus(SynthConfig(out=out, num=2, seed=0, workers=1))


def test_config_rejects_bad_values():
    for kwargs in ({"num": 0}, {"test_fraction": 1.0}, {"sample_rate": 8000}, {"workers": 0}):
        with pytest.raises(ValueError):
            SynthConfig(out="x", **{"num": 4, **kwargs})


def test_ensure_corpus_builds_once_and_reuses_the_cached_folder(tmp_path):
    path = ensure_corpus(tmp_path, num=3, seed=1)
    assert path == corpus_dir(tmp_path, 3, 1, 16000) and (path / "train.jsonl").is_file()
    stamp = os.stat(path / "stats.json").st_mtime_ns
    assert ensure_corpus(tmp_path, num=3, seed=1) == path
    assert os.stat(path / "stats.json").st_mtime_ns == stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temp folder left behind


def test_clean_dir_recordings_of_any_rate_and_layout_are_used_and_bad_ones_counted(tmp_path):
    clean = tmp_path / "clean"
    for spk, voice, sr, stereo in (("alice", "en-us+f2", 22050, True), ("bob", "en+m3", 8000, False)):
        wave, tts_sr = synthesize(Utterance("The painter opened the kitchen window in the morning.", voice=voice))
        wave = resample(wave, tts_sr, sr)
        (clean / spk).mkdir(parents=True)
        sf.write(clean / spk / "a.flac", np.stack([wave, wave], 1) if stereo else wave, sr)
    (clean / "bob" / "broken.wav").write_text("not audio")
    out = tmp_path / "corpus"
    summary = synthesize_corpus(SynthConfig(out=out, num=6, seed=0, workers=1, clean_dir=clean, test_fraction=0.3))
    assert len(summary.skipped) == 1 and "broken.wav" in summary.skipped[0]
    records = read_manifest(out / "train.jsonl") + read_manifest(out / "test.jsonl")
    assert len(records) == 6
    train_spk = {r.meta["speaker"] for r in records if r.meta["split"] == "train"}
    test_spk = {r.meta["speaker"] for r in records if r.meta["split"] == "test"}
    assert train_spk and test_spk and train_spk.isdisjoint(test_spk)
    assert all(r.meta["clean_source"].endswith("a.flac") for r in records)


def test_clean_dir_with_one_speaker_cannot_hold_out_a_test_speaker(tmp_path):
    (tmp_path / "clean").mkdir()
    wave, sr = synthesize(Utterance("The painter opened the kitchen window in the morning."))
    sf.write(tmp_path / "clean" / "only.wav", wave, sr)
    with pytest.raises(ValueError, match="one speaker only"):
        synthesize_corpus(SynthConfig(out=tmp_path / "o", num=4, clean_dir=tmp_path / "clean", workers=1))


# ------------------------------------------------------------------ interrupted runs leave nothing behind
def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (pool workers, Ray-free here, and the resource tracker)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = (int(fields[1]), fields[0])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, (ppid, _) in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _start_and_interrupt(out: Path, sig: signal.Signals, num: int) -> tuple[list[Path], set[int]]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "sqrl", "data", "synth", "--out", str(out), "--num", str(num), "--workers", "2",
           "--no-pesq"]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:  # mid-run: clips written, more to come
            staging = list(out.parent.glob(f".{out.name}.tmp-*"))
            if staging and len(list(staging[0].rglob("*.wav"))) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "synth finished before it could be interrupted"
        children = _descendants(proc.pid)
        assert len(children) >= 3  # two pool workers and the resource tracker
        proc.send_signal(sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.time() + 10
    while time.time() < deadline and any(_running(p) for p in children):
        time.sleep(0.1)
    survivors = {p for p in children if _running(p)}
    for pid in survivors:  # a failing run must not leave them to the next test
        os.kill(pid, signal.SIGKILL)
    return staging, survivors


def test_kill_9_leaves_no_process_and_the_next_run_removes_its_folder_and_makes_the_same_corpus(tmp_path):
    out = tmp_path / "corpus"
    staging, survivors = _start_and_interrupt(out, signal.SIGKILL, num=48)
    assert survivors == set()
    assert staging[0].is_dir() and not out.exists()  # kill -9 gives no chance to clean up: the next run does
    synthesize_corpus(SynthConfig(out=out, num=48, seed=0, workers=2, pesq=False))
    assert not staging[0].exists() and [p.name for p in tmp_path.iterdir()] == ["corpus"]
    clean = tmp_path.parent / f"{tmp_path.name}-clean"
    synthesize_corpus(SynthConfig(out=clean, num=48, seed=0, workers=1, pesq=False))
    for name in ("train.jsonl", "test.jsonl"):
        assert (out / name).read_bytes() == (clean / name).read_bytes()
    wavs = sorted(p.relative_to(clean) for p in clean.rglob("*.wav"))
    assert wavs and wavs == sorted(p.relative_to(out) for p in out.rglob("*.wav"))
    assert all((out / w).read_bytes() == (clean / w).read_bytes() for w in wavs)
    shutil.rmtree(clean)


def test_sigterm_stops_the_workers_and_removes_the_staging_folder_at_once(tmp_path):
    out = tmp_path / "corpus"
    staging, survivors = _start_and_interrupt(out, signal.SIGTERM, num=48)
    assert survivors == set()
    assert not staging[0].exists() and list(tmp_path.iterdir()) == []

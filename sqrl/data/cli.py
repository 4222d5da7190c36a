"""``sqrl data synth | import-qualispeech | validate``.

``register(subparsers)`` adds a ``data`` command to the top-level ``sqrl`` parser. Each leaf
command sets ``func``: a callable taking the parsed namespace and returning the exit status
(0 ok, 1 problems found in the data, 2 the command could not run).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from sqrl.audio import SAMPLING_RATE
from sqrl.config import arg_range
from sqrl.data.sources import DEFAULT_MIN_SNR_DB

log = logging.getLogger(__name__)


def _synth(args: argparse.Namespace) -> int:
    from sqrl.data.synth import SynthConfig, synthesize_corpus

    try:
        cfg = SynthConfig(out=args.out, num=args.num, seed=args.seed, sample_rate=args.sample_rate,
                          test_fraction=args.test_fraction, clean_dir=args.clean_dir, workers=args.workers,
                          min_source_snr_db=args.min_source_snr_db,
                          pesq=not args.no_pesq, overwrite=args.overwrite)
        summary = synthesize_corpus(cfg)
    except (ValueError, FileExistsError, FileNotFoundError) as exc:
        print(f"sqrl data synth: {exc}", file=sys.stderr)
        return 2
    s = summary.stats
    print(f"wrote {summary.n_train} train + {summary.n_test} test clips to {summary.out} "
          f"in {summary.seconds:.1f} s ({s['timing']['clips_per_second']} clips/s)")
    if summary.skipped:
        print(f"skipped {len(summary.skipped)} (listed in {summary.out}/stats.json)")
    pesq = s["pesq"]
    if "pearson" in pesq:
        print(f"label sanity: SNR monotone in noise score: {s['snr_monotone']}; "
              f"PESQ vs overall Pearson {pesq['pearson']}, Spearman {pesq['spearman']} (n={pesq['n']})")
    return 0


def _import(args: argparse.Namespace) -> int:
    from sqrl.data.qualispeech import import_qualispeech

    try:
        summary = import_qualispeech(args.csv, args.audio_dir, args.out)
    except (ValueError, FileNotFoundError, UnicodeDecodeError) as exc:
        print(f"sqrl data import-qualispeech: {exc}", file=sys.stderr)
        return 2
    print(summary.format())
    print(f"manifest: {args.out}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from sqrl.data.validate import fix_manifest, validate_manifest

    try:
        report = validate_manifest(args.manifest, max_seconds=args.max_seconds, sampling_rate=args.sample_rate)
    except (FileNotFoundError, IsADirectoryError, UnicodeDecodeError) as exc:
        print(f"sqrl data validate: {exc}", file=sys.stderr)
        return 2
    print(report.format())
    if args.fix:
        written, dropped = fix_manifest(report, args.fix, sampling_rate=args.sample_rate)
        for line in dropped:
            print(line)
        print(f"--fix: wrote {written} records to {args.fix}, dropped {len(dropped)} lines (listed above)")
    return 1 if report.n_errors else 0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``data`` and its three subcommands to a top-level ``add_subparsers()`` object."""
    data = subparsers.add_parser("data", help="make, import and check speech-quality data")
    sub = data.add_subparsers(dest="data_command", required=True, metavar="{synth,import-qualispeech,validate}")

    p = sub.add_parser("synth", help="write a synthetic degraded-speech corpus with rule-based labels")
    p.add_argument("--out", type=Path, required=True, help="output folder (must be absent or empty)")
    p.add_argument("--num", type=arg_range(int, ge=1), required=True, help="number of clips")
    p.add_argument("--seed", type=arg_range(int, ge=0), default=0)
    p.add_argument("--clean-dir", type=Path, default=None,
                   help="clean recordings (wav/flac/ogg, any rate, mono or stereo) instead of eSpeak; "
                        "sub-folders are speakers")
    p.add_argument("--min-source-snr-db", type=float, default=DEFAULT_MIN_SNR_DB,
                   help="with --clean-dir: skip recordings whose estimated SNR is lower (they are not clean "
                        "enough to be labelled 'no noise'; default %(default)s)")
    p.add_argument("--sample-rate", type=arg_range(int, ge=16000), default=SAMPLING_RATE)
    p.add_argument("--test-fraction", type=arg_range(float, ge=0, lt=1), default=0.15, help="share of clips in test.jsonl")
    p.add_argument("--workers", type=arg_range(int, ge=1), default=2, help="worker processes (1: no pool)")
    p.add_argument("--no-pesq", action="store_true", help="skip the PESQ label-sanity measurement")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.set_defaults(func=_synth)

    p = sub.add_parser("import-qualispeech", help="convert a QualiSpeech CSV into an sqrl manifest")
    p.add_argument("--csv", type=Path, required=True)
    p.add_argument("--audio-dir", type=Path, required=True, help="folder holding the clips named by the id column")
    p.add_argument("--out", type=Path, required=True, help="manifest to write (.jsonl)")
    p.set_defaults(func=_import)

    p = sub.add_parser("validate", help="check a manifest and its audio; exit 1 on errors")
    p.add_argument("manifest", type=Path)
    p.add_argument("--fix", type=Path, default=None, metavar="OUT",
                   help="write the usable lines to OUT, resampling audio to --sample-rate mono")
    p.add_argument("--max-seconds", type=arg_range(float, gt=0), default=30.0, help="longest clip allowed")
    p.add_argument("--sample-rate", type=arg_range(int, ge=1), default=SAMPLING_RATE, help="expected sample rate")
    p.set_defaults(func=_validate)
    return data


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m sqrl.data.cli data ...``) until ``recipes.cli`` wires ``register``."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="sqrl")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

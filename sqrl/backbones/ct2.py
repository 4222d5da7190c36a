"""Read CTranslate2 model files (``model.bin``) without CTranslate2, and map a Whisper encoder to PyTorch.

The format (CTranslate2's ``ModelSpec._serialize``, binary version 6), all little-endian::

    u32 version | str spec_name | u32 revision | u32 n_variables
    n_variables x ( str name | u8 ndim | ndim x u32 dim | u8 dtype_id | u32 nbytes | nbytes of data )
    u32 n_aliases | n_aliases x ( str alias | str target )

where ``str`` is ``u16 length (bytes + 1) | utf-8 bytes | NUL`` and ``dtype_id`` indexes
:data:`DTYPES`. Nothing is unpickled or executed: every field is checked against the file size.

Whisper's fp16 weights widen to fp32 exactly. CTranslate2 fuses self-attention q, k, v into one
``linear_0`` (and cross-attention k, v); :func:`whisper_encoder_state_dict` splits them back and drops
the key bias, which Whisper does not have (the converter stores zeros there, and a non-zero one is an
error, not something to drop silently).
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

# Order of CTranslate2's DataType enum (include/ctranslate2/types.h).
DTYPES = (np.dtype("<f4"), np.dtype("i1"), np.dtype("<i2"), np.dtype("<i4"), np.dtype("<f2"), "bfloat16")
SUPPORTED_VERSIONS = (5, 6)


class CT2FormatError(ValueError):
    """The file is not a CTranslate2 model this reader understands (or is truncated)."""


@dataclass
class CT2Model:
    """The named arrays of one ``model.bin`` (floats as stored: fp16 stays fp16 until you convert)."""

    spec: str
    revision: int
    version: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> np.ndarray:
        """The array ``name``, following an alias (e.g. a tied projection) to its target."""
        return self.variables[self.aliases.get(name, name)]


class _Reader:
    def __init__(self, data: bytes | memoryview, path: str):
        self.data = memoryview(data)
        self.pos = 0
        self.path = path

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise CT2FormatError(f"{self.path}: truncated at byte {self.pos} while reading {what} "
                                 f"({n} bytes wanted, {len(self.data) - self.pos} left)")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))[0]

    def string(self, what: str) -> str:
        n = self.unpack("H", f"length of {what}")
        raw = bytes(self.take(n, what))
        if n == 0 or raw[-1] != 0:
            raise CT2FormatError(f"{self.path}: {what} at byte {self.pos - n} is not NUL-terminated")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CT2FormatError(f"{self.path}: {what} is not UTF-8: {exc}") from None


def read_ct2(path: str | Path) -> CT2Model:
    """Parse ``path`` into a :class:`CT2Model`; a malformed or truncated file is a ``CT2FormatError``."""
    path = Path(path)
    data = path.read_bytes()
    r = _Reader(data, str(path))
    version = r.unpack("I", "binary version")
    if version not in SUPPORTED_VERSIONS:
        raise CT2FormatError(f"{path}: CTranslate2 binary version {version}; this reader knows {SUPPORTED_VERSIONS}"
                             " (is this a CTranslate2 model.bin at all?)")
    spec = r.string("spec name")
    revision = r.unpack("I", "revision")
    count = r.unpack("I", "variable count")
    variables: dict[str, np.ndarray] = {}
    for i in range(count):
        name = r.string(f"name of variable {i}")
        ndim = r.unpack("B", f"rank of {name}")
        shape = tuple(r.unpack("I", f"shape of {name}") for _ in range(ndim))
        dtype_id = r.unpack("B", f"dtype of {name}")
        if dtype_id >= len(DTYPES):
            raise CT2FormatError(f"{path}: {name} has unknown dtype id {dtype_id}")
        nbytes = r.unpack("I", f"size of {name}")
        raw = r.take(nbytes, f"data of {name}")
        variables[name] = _array(raw, DTYPES[dtype_id], shape, name, path)
    aliases = {}
    for _ in range(r.unpack("I", "alias count")):
        alias = r.string("alias")
        aliases[alias] = r.string(f"target of alias {alias}")
    if r.pos != len(data):
        raise CT2FormatError(f"{path}: {len(data) - r.pos} unexpected bytes after the last alias")
    missing = sorted(t for t in aliases.values() if t not in variables)
    if missing:
        raise CT2FormatError(f"{path}: aliases point at missing variables {missing}")
    return CT2Model(spec=spec, revision=revision, version=version, variables=variables, aliases=aliases)


def _array(raw: memoryview, dtype, shape: tuple[int, ...], name: str, path: Path) -> np.ndarray:
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if isinstance(dtype, str):  # bfloat16: numpy has none; the high half of a float32
        if len(raw) != 2 * count:
            raise CT2FormatError(f"{path}: {name}: {len(raw)} bytes for {count} bfloat16 values")
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(shape)
    if len(raw) != dtype.itemsize * count:
        raise CT2FormatError(f"{path}: {name}: {len(raw)} bytes for shape {shape} of {dtype}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


def write_ct2(path: str | Path, variables: dict[str, np.ndarray], *, spec: str = "WhisperSpec",
              revision: int = 3, aliases: dict[str, str] | None = None) -> Path:
    """Write arrays in the same format (binary version 6); used to make small files for tests."""
    path = Path(path)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<I", 6))
        _write_string(fh, spec)
        fh.write(struct.pack("<II", revision, len(variables)))
        for name, value in variables.items():
            value = np.asarray(value)  # (ascontiguousarray would make a scalar 1-D)
            dtype = value.dtype.newbyteorder("<") if value.dtype.itemsize > 1 else value.dtype
            dtype_id = [d if isinstance(d, str) else d.name for d in DTYPES].index(dtype.name)
            _write_string(fh, name)
            fh.write(struct.pack("<B", value.ndim))
            fh.write(struct.pack(f"<{value.ndim}I", *value.shape))
            data = value.astype(dtype).tobytes()
            fh.write(struct.pack("<BI", dtype_id, len(data)))
            fh.write(data)
        aliases = aliases or {}
        fh.write(struct.pack("<I", len(aliases)))
        for alias, target in aliases.items():
            _write_string(fh, alias)
            _write_string(fh, target)
    return path


def _write_string(fh: BinaryIO, text: str) -> None:
    raw = text.encode("utf-8")
    fh.write(struct.pack("<H", len(raw) + 1) + raw + b"\0")


# ---------------------------------------------------------------------- Whisper encoder -> PyTorch
_LAYER = re.compile(r"encoder/layer_(\d+)/")


def whisper_encoder_state_dict(model: CT2Model, *, positions: int | None = None) -> dict[str, torch.Tensor]:
    """The encoder of a CTranslate2 Whisper as an fp32 state dict of a Whisper-style PyTorch encoder.

    The keys are those of ``Qwen2AudioEncoder`` / ``AudioFlamingo3Encoder`` (and ``WhisperEncoder``):
    ``conv1``, ``conv2``, ``embed_positions``, ``layers.N.{self_attn.{q,k,v,out}_proj, self_attn_layer_norm,
    fc1, fc2, final_layer_norm}``, ``layer_norm``. ``positions`` keeps the first rows of the position
    table (a window shorter than Whisper's 30 s); None keeps all 1500.
    """
    if model.spec != "WhisperSpec":
        raise CT2FormatError(f"expected a WhisperSpec model, got {model.spec!r}")
    v = model.variables

    def t(name: str) -> torch.Tensor:
        if name not in v:
            raise CT2FormatError(f"the Whisper model has no variable {name!r}")
        arr = v[name]
        if not np.issubdtype(arr.dtype, np.floating):
            raise CT2FormatError(f"{name} is {arr.dtype}, not a float array (a quantised model is not supported)")
        return torch.from_numpy(arr.astype(np.float32))

    layers = sorted({int(m.group(1)) for name in v if (m := _LAYER.match(name))})
    if layers != list(range(len(layers))) or not layers:
        raise CT2FormatError(f"encoder layers are not numbered 0..N-1: {layers}")
    out: dict[str, torch.Tensor] = {
        "conv1.weight": t("encoder/conv1/weight"), "conv1.bias": t("encoder/conv1/bias"),
        "conv2.weight": t("encoder/conv2/weight"), "conv2.bias": t("encoder/conv2/bias"),
        "layer_norm.weight": t("encoder/layer_norm/gamma"), "layer_norm.bias": t("encoder/layer_norm/beta"),
    }
    table = t("encoder/position_encodings/encodings")
    if positions is not None:
        if not 0 < positions <= table.shape[0]:
            raise ValueError(f"positions must be in 1..{table.shape[0]}, got {positions}")
        table = table[:positions].clone()
    out["embed_positions.weight"] = table
    for i in layers:
        src, dst = f"encoder/layer_{i}/", f"layers.{i}."
        qkv_w, qkv_b = t(src + "self_attention/linear_0/weight"), t(src + "self_attention/linear_0/bias")
        d = qkv_w.shape[1]
        if qkv_w.shape[0] != 3 * d or qkv_b.shape != (3 * d,):
            raise CT2FormatError(f"layer {i}: fused qkv has shape {tuple(qkv_w.shape)}, expected ({3 * d}, {d})")
        q_w, k_w, v_w = qkv_w.split(d)
        q_b, k_b, v_b = qkv_b.split(d)
        if torch.any(k_b != 0):
            raise CT2FormatError(f"layer {i}: the key bias is not zero; Whisper's key projection has no bias")
        out.update({
            dst + "self_attn.q_proj.weight": q_w.clone(), dst + "self_attn.q_proj.bias": q_b.clone(),
            dst + "self_attn.k_proj.weight": k_w.clone(),
            dst + "self_attn.v_proj.weight": v_w.clone(), dst + "self_attn.v_proj.bias": v_b.clone(),
            dst + "self_attn.out_proj.weight": t(src + "self_attention/linear_1/weight"),
            dst + "self_attn.out_proj.bias": t(src + "self_attention/linear_1/bias"),
            dst + "self_attn_layer_norm.weight": t(src + "self_attention/layer_norm/gamma"),
            dst + "self_attn_layer_norm.bias": t(src + "self_attention/layer_norm/beta"),
            dst + "fc1.weight": t(src + "ffn/linear_0/weight"), dst + "fc1.bias": t(src + "ffn/linear_0/bias"),
            dst + "fc2.weight": t(src + "ffn/linear_1/weight"), dst + "fc2.bias": t(src + "ffn/linear_1/bias"),
            dst + "final_layer_norm.weight": t(src + "ffn/layer_norm/gamma"),
            dst + "final_layer_norm.bias": t(src + "ffn/layer_norm/beta"),
        })
    return out


def whisper_encoder_dims(model: CT2Model) -> dict[str, int]:
    """Sizes of the encoder: ``d_model``, ``layers``, ``heads``, ``ffn_dim``, ``mel_bins``, ``positions``."""
    v = model.variables
    conv1 = v["encoder/conv1/weight"]
    heads = v.get("encoder/num_heads")
    if heads is None:
        raise CT2FormatError("the Whisper model does not record encoder/num_heads")
    return {
        "d_model": int(conv1.shape[0]),
        "mel_bins": int(conv1.shape[1]),
        "layers": len({m.group(1) for name in v if (m := _LAYER.match(name))}),
        "heads": int(np.asarray(heads).reshape(-1)[0]),
        "ffn_dim": int(v["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        "positions": int(v["encoder/position_encodings/encodings"].shape[0]),
    }

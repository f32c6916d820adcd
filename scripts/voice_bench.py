"""Voice benchmark: espeak-ng speech → offline Whisper → the trained router, on fixed commands.

20 English commands over 12 registry domains (target: end-to-end function accuracy ≥ 0.85) and a few
Mandarin ones (espeak-ng's `cmn-latn-pinyin` voice reading pinyin). Reports word error rate (jiwer; for
Mandarin the character error rate), end-to-end function accuracy (speech in, the call's name right),
text-only accuracy on the reference text (what routing alone gets), and p50 latencies of speech
recognition, routing and voice-to-call. Writes `voice-bench.json` and `voice-bench.md` into --out.

    OMP_NUM_THREADS=2 .venv/bin/python scripts/voice_bench.py --run runs/cpu-default --out runs/cpu-default/voice-bench
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import jiwer

from tvcall.app.demo.asr import speak, transcribe
from tvcall.app.engine.hf_engine import TransformersEngine, set_threads
from tvcall.data.numbers import surface_forms
from tvcall.functions.registry import default_registry

# (what is said, the function expected); numbers as words, as a speaker says them
ENGLISH = [
    ("set the volume to thirty", "sound.volume.set"),
    ("turn up the volume", "sound.volume.increase"),
    ("mute the sound", "sound.mute.turn_on"),
    ("switch to channel twelve", "channel.tv.switch_number"),
    ("next channel", "channel.tv.next"),
    ("switch to HDMI two", "input.source.switch"),
    ("open Netflix", "app.application.open"),
    ("close the app", "app.application.close"),
    ("pause the video", "playback.media.pause"),
    ("fast forward thirty seconds", "playback.media.seek_forward"),
    ("set a sleep timer for thirty minutes", "power.sleep_timer.set"),
    ("turn off the TV", "power.tv.turn_off"),
    ("set the brightness to seventy", "picture.brightness.set"),
    ("increase the contrast", "picture.contrast.increase"),
    ("turn on the bedroom lights", "smarthome.light.turn_on"),
    ("what's the weather forecast", "info.weather.get_forecast"),
    ("turn on bluetooth", "network.bluetooth.turn_on"),
    ("check for system updates", "system.update.check"),
    ("turn on kids mode", "parental.kids_mode.turn_on"),
    ("who directed Titanic", "media.movie.query_director"),
]
# (pinyin for espeak-ng, the characters meant, the function expected)
MANDARIN = [
    ("ba3 yin1 liang4 tiao2 dao4 er4 shi2", "把音量调到二十", "sound.volume.set"),
    ("huan4 dao4 wu3 tai2", "换到五台", "channel.tv.switch_number"),
    ("zan4 ting2", "暂停", "playback.media.pause"),
    ("guan1 ji1", "关机", "power.tv.turn_off"),
    ("da3 kai1 wo4 shi4 de5 deng1", "打开卧室的灯", "smarthome.light.turn_on"),
]


def normalise(text: str, lang: str) -> str:
    """Lower case, no punctuation, numbers as words ("30" and "thirty" are the same word to a listener)."""
    def spelled(match: re.Match[str]) -> str:
        forms = surface_forms(int(match.group()), lang)
        return forms[-1] if len(forms) > 1 else match.group()

    text = re.sub(r"\d+", spelled, text.lower())
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s']", " ", text)).strip()


def p50(values: list[float]) -> float:
    return round(statistics.median(values), 1) if values else 0.0


def run_case(engine: TransformersEngine, said: str, reference: str, expected: str, lang: str, wav: Path, prompt: bool) -> dict[str, Any]:
    heard = transcribe(speak(said, lang, wav), lang, prompt=prompt)
    routed = engine.route(heard.text)
    text_only = engine.route(reference)
    return {"lang": lang, "reference": reference, "transcript": heard.text, "expected": expected,
            "voice_call": routed.call(), "text_call": text_only.call(), "voice_correct": routed.name == expected,
            "text_correct": text_only.name == expected, "asr_ms": round(heard.latency_ms, 1), "routing_ms": round(routed.latency_ms, 1),
            "voice_to_call_ms": round(heard.latency_ms + routed.latency_ms, 1), "audio_s": round(heard.audio_s, 2)}


def summarise(cases: list[dict[str, Any]], lang: str) -> dict[str, Any]:
    refs = [normalise(c["reference"], lang) for c in cases]
    hyps = [normalise(c["transcript"], lang) for c in cases]
    error = jiwer.cer(refs, hyps) if lang == "zh" else jiwer.wer(refs, hyps)
    return {"n": len(cases), "domains": len({c["expected"].split(".")[0] for c in cases}),
            ("cer" if lang == "zh" else "wer"): round(error, 3),
            "voice_function_accuracy": round(sum(c["voice_correct"] for c in cases) / len(cases), 3),
            "text_function_accuracy": round(sum(c["text_correct"] for c in cases) / len(cases), 3),
            "asr_p50_ms": p50([c["asr_ms"] for c in cases]), "routing_p50_ms": p50([c["routing_ms"] for c in cases]),
            "voice_to_call_p50_ms": p50([c["voice_to_call_ms"] for c in cases])}


def markdown(report: dict[str, Any]) -> str:
    lines = ["| set | n | domains | WER/CER | voice→call function acc. | text-only acc. | ASR p50 ms | routing p50 ms | voice-to-call p50 ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, s in report["summary"].items():
        lines.append(f"| {name} | {s['n']} | {s['domains']} | {s.get('wer', s.get('cer'))} | {s['voice_function_accuracy']} | "
                     f"{s['text_function_accuracy']} | {s['asr_p50_ms']} | {s['routing_p50_ms']} | {s['voice_to_call_p50_ms']} |")
    lines += ["", "| lang | reference | transcript | expected | voice call | ok |", "|---|---|---|---|---|---|"]
    for c in report["cases"]:
        lines.append(f"| {c['lang']} | {c['reference']} | {c['transcript']} | `{c['expected']}` | `{c['voice_call'].get('name')}` | "
                     f"{'yes' if c['voice_correct'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/cpu-default")
    parser.add_argument("--out", help="folder for voice-bench.json and .md (default: RUN/voice-bench)")
    parser.add_argument("--threads", type=int, default=2, help="torch and Whisper threads")
    parser.add_argument("--no-prompt", action="store_true", help="no registry vocabulary as Whisper's initial prompt")
    args = parser.parse_args(argv)

    registry = default_registry()
    missing = [f for _, f in ENGLISH if f not in registry] + [f for *_, f in MANDARIN if f not in registry]
    if missing:
        print(f"voice_bench: unknown functions {missing}", file=sys.stderr)
        return 2
    set_threads(args.threads)
    engine = TransformersEngine.from_run(Path(args.run))
    transcribe(speak("warm up", "en", Path(tempfile.mkdtemp()) / "warm.wav"), "en", threads=args.threads)  # load Whisper
    cases: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (said, expected) in enumerate(ENGLISH):
            cases.append(run_case(engine, said, said, expected, "en", Path(tmp) / f"en{i}.wav", not args.no_prompt))
        for i, (pinyin, chars, expected) in enumerate(MANDARIN):
            cases.append(run_case(engine, pinyin, chars, expected, "zh", Path(tmp) / f"zh{i}.wav", not args.no_prompt))
    report = {"run": args.run, "threads": args.threads, "prompt": not args.no_prompt,
              "summary": {lang: summarise([c for c in cases if c["lang"] == lang], lang) for lang in ("en", "zh")}, "cases": cases}
    out = Path(args.out or Path(args.run) / "voice-bench")
    out.mkdir(parents=True, exist_ok=True)
    (out / "voice-bench.json").write_text(json.dumps(report, ensure_ascii=False, indent=1))
    (out / "voice-bench.md").write_text(markdown(report))
    print(markdown(report))
    print(out / "voice-bench.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

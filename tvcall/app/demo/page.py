"""`tvcall demo`: the Gradio voice and text demo over the router's own pieces.

A command (typed, recorded or uploaded) goes through offline speech recognition (`tvcall.app.demo.asr`), then the
router's `route_text` (the batcher, its limits and time-out, an invalid call turned into none) and `execute`
(the dispatcher on the simulated TV); a call under the run's act threshold is not run but asked about, and risky
calls are held in the router's `Confirmations` until the user confirms. The page shows the transcript, the call
as JSON, the slots highlighted in the utterance, the confidence and the latencies, and a panel with the simulated
TV's state.
"""

from __future__ import annotations

import asyncio
import html
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import HTTPException

from tvcall.app.demo.asr import LANGS, AudioError, Transcript, load_model, transcribe
from tvcall.app.demo.review import Draft, ReviewDesk, highlights
from tvcall.app.engine.base import Engine, RouteResult
from tvcall.app.engine.compound import answer_of
from tvcall.app.serve.api_models import MAX_TEXT_CHARS, check_text
from tvcall.app.serve.router import RouterConfig, RouterState, act, guess_lang, route_parts, run_confirmed
from tvcall.app.serve.sessions import CONFIRM, DIALOG_FUNCTIONS, context_after
from tvcall.data.grounding import occurrences, value_surfaces  # the forms eval uses to locate a value in the text
from tvcall.functions.spec import FunctionSpec

EXAMPLES = {
    "en": ["turn up the volume", "set the volume to 35", "switch to channel 12", "switch to HDMI 2", "open Netflix",
           "pause the video", "set a sleep timer for 30 minutes", "factory reset the TV"],
    "zh": ["把音量调到二十", "换到5台", "切换到HDMI 1", "打开爱奇艺", "暂停", "30分钟后关机", "恢复出厂设置"],
}
Transcriber = Callable[[str, str], Transcript]


@dataclass
class Outcome:
    """What one command produced, in the order of `Demo.outputs`."""

    status: str
    transcript: str = ""
    highlights: list[tuple[str, str | None]] = field(default_factory=list)
    call: dict[str, Any] | None = None
    timing: str = ""
    pending: str | None = None  # confirmation token of a held risky call
    question: str = ""


def slot_highlights(text: str, calls: list[tuple[dict[str, Any], FunctionSpec]], lang: str) -> list[tuple[str, str | None]]:
    """`text` cut into (segment, slot or None): each argument of each call (its arguments, its function) at the first
    free place one of its surface forms occurs."""
    lowered = text.lower()
    taken: list[tuple[int, int, str]] = []
    for slot, value, spec in [(slot, value, spec) for arguments, spec in calls for slot, value in arguments.items()]:
        schema = spec.properties.get(slot, {})
        free = ((start, start + len(form)) for form in sorted(value_surfaces(value, schema, lang), key=len, reverse=True)
                if form for start in occurrences(lowered, form.lower()))
        span = next(((start, end) for start, end in free if not any(s < end and start < e for s, e, _ in taken)), None)
        if span is not None:
            taken.append((*span, slot))
    segments: list[tuple[str, str | None]] = []
    cursor = 0
    for start, end, slot in sorted(taken):
        if start > cursor:
            segments.append((text[cursor:start], None))
        segments.append((text[start:end], slot))
        cursor = end
    if cursor < len(text):
        segments.append((text[cursor:], None))
    return segments


PANEL_CSS = """
#tv-panel {background:#0f172a; color:#f8fafc; border:10px solid #334155; border-radius:14px; padding:14px;
           font-family:system-ui,sans-serif; font-size:14px}
#tv-panel, #tv-panel * {color:#f8fafc !important}
#tv-panel.off {background:#020617}
#tv-panel .title {font-weight:600; margin-bottom:8px}
#tv-panel .bar {background:#334155; border-radius:4px; height:12px; margin:4px 0 10px}
#tv-panel .bar > div {background:#22c55e; border-radius:4px; height:12px}
#tv-panel table {width:100%; border-collapse:collapse; table-layout:fixed}
#tv-panel td {background:transparent !important; border:none !important; padding:3px 6px;
              overflow-wrap:anywhere}
#tv-panel td.key {color:#94a3b8 !important; width:30%}
#tv-panel ul {margin:6px 0 0 18px; padding:0}
#tv-panel li {color:#cbd5e1 !important}
"""


def tv_panel(state: RouterState, executed: int) -> str:
    """The simulated TV as HTML; every value carries an id and `data-value` for the browser test."""
    tv = state.tv
    snap = tv.snapshot()
    volume, muted = tv.volume, tv.muted
    low, high = tv.bounds("sound.volume")
    channel = f"{snap['channel']}" + (f" · {snap['channel_name']}" if snap["channel_name"] else "")
    position = f"{snap['position_s'] // 60}:{snap['position_s'] % 60:02d}"
    last = snap["history"][-1] if snap["history"] else None
    last_call = f"{last['name']}({', '.join(f'{k}={v}' for k, v in last['arguments'].items())})" if last else "—"
    timers = ", ".join(f"{k} {v.get('minutes', '')}".strip() for k, v in snap["timers"].items()) or "—"
    settings = "".join(f"<li>{html.escape(f'{k} = {v}')}</li>" for k, v in list(snap["settings"].items())[-6:])
    rows = [("power", "Power", snap["power"], snap["power"]), ("channel", "Channel", channel, snap["channel"]),
            ("input", "Input", snap["input"], snap["input"]), ("app", "App", snap["app"] or "—", snap["app"] or ""),
            ("playback", "Playback", f"{snap['playback']} at {position}", snap["playback"]), ("timers", "Timers", timers, timers),
            ("calls", "Calls run", str(executed), executed), ("last", "Last call", last_call, last["name"] if last else "")]
    table = "".join(f'<tr><td class="key">{label}</td><td id="tv-{key}" data-value="{html.escape(str(value))}">{html.escape(shown)}</td></tr>'
                    for key, label, shown, value in rows)
    percent = 100 * (volume - low) / max(1, high - low)
    return (f'<div id="tv-panel" class="{"on" if snap["power"] == "on" else "off"}"><div class="title">Simulated TV</div>'
            f'<div id="tv-volume" data-value="{volume}" data-muted="{str(muted).lower()}">Volume {volume}{" (muted)" if muted else ""}</div>'
            f'<div class="bar"><div style="width:{percent:.0f}%"></div></div><table>{table}</table><ul>{settings}</ul></div>')


DEMO_SESSION = "demo"  # one TV, one conversation: "撤销" and "确定" act on the page's last call


class Demo:
    """The demo's logic, independent of Gradio: one simulated TV and one router state shared by all users."""

    def __init__(self, engine: Engine, transcriber: Transcriber | None = None, timeout_s: float = 30.0,
                 review: ReviewDesk | None = None) -> None:
        self.state = RouterState(engine, RouterConfig(timeout_s=timeout_s, max_batch=4), None)
        self.review = review
        self.transcriber = transcriber or transcribe
        self.executed = 0
        self._langs: dict[str, str] = {}  # confirmation token → the command's language
        self._loop: asyncio.AbstractEventLoop | None = None

    async def _started(self) -> None:
        # The batcher lives on the event loop that serves requests; Gradio's is one for the app's life.
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            await self.state.batcher.start()
            self._loop = loop

    def panel(self) -> str:
        return tv_panel(self.state, self.executed)

    async def run_text(self, text: str | None, transcript: Transcript | None = None) -> Outcome:
        text = (text or "").strip()
        heard = transcript.text if transcript else ""
        try:
            check_text(text)
        except ValueError:
            return Outcome("Type a command first." if transcript is None else "Nothing was recognised in the recording.", heard)
        if len(text) > MAX_TEXT_CHARS:
            return Outcome(f"The command is over {MAX_TEXT_CHARS} characters; say one command.", heard)
        await self._started()
        session = self.state.sessions.get(DEMO_SESSION)
        try:  # after the page's last call, so "再大一点" follows it; a compound command gives several
            results = [r for _, r in await route_parts(self.state, text, session.last_answer)]
        except HTTPException as exc:
            return Outcome(f"Could not route this command: {exc.detail}", heard)
        session.last_answer = context_after(session.last_answer, [(r.name, r.arguments) for r in results])
        lang = transcript.lang if transcript else guess_lang(text)
        outcome = self._describe(text, results, lang, transcript)
        if any(r.name for r in results):
            await self._act(outcome, results, lang)
        return outcome

    async def run_audio(self, path: str | None, lang: str) -> Outcome:
        if not path:
            return Outcome("Record or upload a command first.")
        try:
            transcript = await asyncio.to_thread(self.transcriber, path, lang if lang in LANGS else "en")
        except AudioError as exc:
            return Outcome(f"Could not use the audio: {exc}.")
        return await self.run_text(transcript.text, transcript)

    async def confirm(self, token: str | None) -> str:
        pending = self.state.confirmations.take(token) if token else None
        lang = self._langs.pop(token or "", "en")
        if pending is None:
            return "Nothing to confirm (the request expired or was already handled)."
        await self._started()
        try:
            done = await run_confirmed(self.state, self.state.sessions.get(DEMO_SESSION), pending, lang)
        except HTTPException as exc:
            return f"`{pending.name}` could not run: {exc.detail}"
        self.executed += sum(r.get("ok", True) for r in done)
        return "Confirmed and " + "; ".join(f"ran `{r['name']}`: {r.get('message', '')}" for r in done)

    def cancel(self, token: str | None) -> str:
        pending = self.state.confirmations.take(token) if token else None
        self._langs.pop(token or "", None)
        return f"Cancelled {', '.join(f'`{n}`' for n, _ in pending.calls)}." if pending else "Nothing to cancel."

    def _describe(self, text: str, results: list[RouteResult], lang: str, transcript: Transcript | None) -> Outcome:
        """The page's view of a command's calls (one, or a compound command's several), before any runs."""
        named = [r for r in results if r.name]
        confidence = min((r.confidence for r in named), default=results[0].confidence)
        routing = sum(r.latency_ms for r in results)
        timing = f"confidence **{confidence:.2f}** · routing **{routing:.0f} ms**"
        if transcript is not None:
            timing = (f"confidence **{confidence:.2f}** · speech recognition **{transcript.latency_ms:.0f} ms** "
                      f"(clip {transcript.audio_s:.1f} s) · routing **{routing:.0f} ms** · "
                      f"voice-to-call **{transcript.latency_ms + routing:.0f} ms**")
        specs = [self.state.registry[r.name] for r in named]
        status = " · ".join(f"`{spec.name}`: {spec.description.forms(lang)[0]}" for spec in specs) or "No TV function matches this command."
        call = answer_of([r.call() for r in named or results[:1]])
        marked = slot_highlights(text, [(r.arguments, spec) for r, spec in zip(named, specs, strict=True)], lang)
        return Outcome(status, text if transcript else "", marked, call, timing)

    async def _act(self, outcome: Outcome, results: list[RouteResult], lang: str) -> None:
        """Run the calls as the router's `execute` does (`act`), and say what happened."""
        session = self.state.sessions.get(DEMO_SESSION)
        named = ", ".join(f"`{r.name}`" for r in results if r.name)
        try:
            acted = await act(self.state, session, [r for r in results if r.name], lang)
        except HTTPException as exc:
            outcome.status = f"{named} could not run: {exc.detail}"
            return
        if acted.unsure is not None:
            unsure = acted.unsure
            outcome.status = (f"Not sure enough to run `{unsure.name}` (confidence {unsure.confidence:.3f}, under "
                              f"{self.state.act_threshold:.3f}). Did you mean " + ", ".join(f"`{n}`" for n in acted.candidates) + "?")
        elif acted.token:
            outcome.pending = acted.token
            self._langs[acted.token] = lang
            risky = [self.state.registry[r.name] for r in results if r.name and self.state.registry[r.name].risk == "confirm"]
            outcome.question = ("⚠️ " + ", ".join(f"**{spec.description.forms(lang)[0]}** (`{spec.name}`)" for spec in risky)
                                + " is a risky action. Run " + ("it" if len(results) == 1 else "the whole command") + "?")
            outcome.status = f"{named} waits for your confirmation."
        elif len(results) == 1 and results[0].name in DIALOG_FUNCTIONS:
            done = acted.results[0]
            ran = done["data"].get("calls", [done]) if done["name"] == CONFIRM else [done]  # a confirmed list: each call
            self.executed += sum(r.get("ok", True) for r in ran if r["name"] not in DIALOG_FUNCTIONS)
            outcome.status = f"`{results[0].name}`: {done['message']}"
        else:
            self.executed += sum(r.get("ok", True) for r in acted.results)
            outcome.status = "; ".join(("Ran" if i == 0 else "ran") + f" `{r['name']}`: {r.get('message', '')}"
                                       for i, r in enumerate(acted.results))


def build_app(demo: Demo) -> Any:
    """The Gradio Blocks page around `demo`."""
    import gradio as gr

    with gr.Blocks(title="tvcall demo", analytics_enabled=False) as app:
        gr.Markdown("## tvcall: TV commands by voice or text (English / 中文)\nType, record or upload a command; "
                    "the router turns it into a function call and the simulated TV runs it. Risky calls ask first.")
        with gr.Tab("Route", elem_id="tab-route"):
            route_tab(demo)
        if demo.review is not None:
            with gr.Tab("Review", elem_id="tab-review"):
                load, inputs, outputs = review_tab(demo.review)
            app.load(load, inputs, outputs)  # the queue's first request, at each page load
    return app


def route_tab(demo: Demo) -> None:
    import gradio as gr

    pending = gr.State(None)
    with gr.Row():
        with gr.Column(scale=3):
            with gr.Row():
                command = gr.Textbox(label="Command", placeholder="turn up the volume / 把音量调到二十", elem_id="command", scale=4)
                route_btn = gr.Button("Route", variant="primary", elem_id="route", scale=1)
            with gr.Row():
                audio = gr.Audio(sources=["microphone", "upload"], type="filepath", label="Voice command", elem_id="audio", scale=3)
                with gr.Column(scale=1):
                    lang = gr.Radio(list(LANGS), value="en", label="Speech language", elem_id="lang")
                    speak_btn = gr.Button("Recognise and route", elem_id="speak")
            status = gr.Markdown(elem_id="status")
            with gr.Row(visible=False, elem_id="confirm-row") as confirm_row:
                question = gr.Markdown()
                confirm_btn = gr.Button("Confirm", variant="stop", elem_id="confirm")
                cancel_btn = gr.Button("Cancel", elem_id="cancel")
            transcript = gr.Textbox(label="Transcript (speech recognition)", interactive=False, elem_id="transcript")
            slots = gr.HighlightedText(label="Slots in the utterance", elem_id="slots", show_legend=True)
            call = gr.JSON(label="Function call", elem_id="call")
            timing = gr.Markdown(elem_id="timing")
        with gr.Column(scale=2):
            panel = gr.HTML(demo.panel(), elem_id="tv")
    outputs = [status, transcript, slots, call, timing, confirm_row, question, pending, panel]

    def shown(outcome: Outcome) -> tuple[Any, ...]:
        return (outcome.status, outcome.transcript, outcome.highlights, outcome.call, outcome.timing,
                gr.update(visible=outcome.pending is not None), outcome.question, outcome.pending, demo.panel())

    async def on_text(text: str | None) -> tuple[Any, ...]:
        return shown(await demo.run_text(text))

    async def on_audio(path: str | None, language: str) -> tuple[Any, ...]:
        return shown(await demo.run_audio(path, language))

    async def on_confirm(token: str | None) -> tuple[Any, ...]:
        return await demo.confirm(token), gr.update(visible=False), None, demo.panel()

    def on_cancel(token: str | None) -> tuple[Any, ...]:
        return demo.cancel(token), gr.update(visible=False), None, demo.panel()

    route_btn.click(on_text, [command], outputs)
    command.submit(on_text, [command], outputs)
    speak_btn.click(on_audio, [audio, lang], outputs)
    confirm_btn.click(on_confirm, [pending], [status, confirm_row, pending, panel])
    cancel_btn.click(on_cancel, [pending], [status, confirm_row, pending, panel])
    for language, label in (("en", "English examples"), ("zh", "中文示例")):
        gr.Examples([[t] for t in EXAMPLES[language]], inputs=[command], outputs=outputs, fn=on_text,
                    run_on_click=True, cache_examples=False, label=label)


def review_tab(desk: ReviewDesk) -> tuple[Any, list[Any], list[Any]]:
    """The traffic log's review queue: accept or correct the call, mark slot spans by selecting text, save."""
    import gradio as gr

    request_id, skipped, spans, selection = gr.State(None), gr.State([]), gr.State([]), gr.State(None)
    heading = gr.Markdown(elem_id="review-heading")
    text = gr.Textbox(label="Utterance: select a slot's text, choose the slot, then Mark", interactive=False, elem_id="review-text")
    with gr.Row():
        slot = gr.Dropdown(label="Slot", choices=[], allow_custom_value=True, elem_id="review-slot", scale=2)
        mark_btn = gr.Button("Mark span", elem_id="review-mark", scale=1)
    marked = gr.HighlightedText(label="Marked spans", elem_id="review-spans", show_legend=True)
    with gr.Row():
        name = gr.Textbox(label="Function (empty: no function)", elem_id="review-name", scale=2)
        arguments = gr.Textbox(label="Arguments (JSON)", elem_id="review-arguments", scale=3)
    with gr.Row():
        save_btn = gr.Button("Save", variant="primary", elem_id="review-save")
        skip_btn = gr.Button("Skip", elem_id="review-skip")
    status = gr.Markdown(elem_id="review-status")
    shown = [request_id, heading, text, name, arguments, spans, marked, slot, selection]

    def show(draft: Draft) -> tuple[Any, ...]:
        slots = sorted(desk.registry[draft.name].properties) if draft.name in desk.registry else []
        return (draft.request_id, draft.heading, draft.text, draft.name, draft.arguments, draft.spans,
                highlights(draft.text, draft.spans), gr.update(choices=slots, value=slots[0] if slots else None), None)

    def on_load(skip: list[str]) -> tuple[Any, ...]:
        return show(desk.draft(skip))

    def on_select(event: gr.SelectData) -> list[int]:
        return list(event.index)  # [start, end) of the selected characters

    on_select.__annotations__["event"] = gr.SelectData  # Gradio finds the event by its type; gr is imported here only

    def on_mark(utterance: str, current: list[Any], chosen: tuple[int, int] | None, slot_name: str | None) -> tuple[Any, ...]:
        updated, message = desk.mark(utterance, current, chosen, slot_name)
        return updated, highlights(utterance, updated), message

    def on_save(current_id: str | None, skip: list[str], function: str, values: str, current: list[Any]) -> tuple[Any, ...]:
        saved, message = desk.save(current_id, function, values, current)
        return (*show(desk.draft(skip)), message) if saved else (*(gr.update() for _ in shown), message)

    def on_skip(current_id: str | None, skip: list[str]) -> tuple[Any, ...]:
        skip = [*skip, current_id] if current_id else skip
        return (skip, *show(desk.draft(skip)), "")

    text.select(on_select, None, selection)
    mark_btn.click(on_mark, [text, spans, selection, slot], [spans, marked, status])
    save_btn.click(on_save, [request_id, skipped, name, arguments, spans], [*shown, status])
    skip_btn.click(on_skip, [request_id, skipped], [skipped, *shown, status])
    return on_load, [skipped], shown


def launch(demo: Demo, host: str = "127.0.0.1", port: int = 7860, block: bool = True) -> Any:
    """Serve the page (loopback by default); `block=False` returns the running app for tests."""
    import gradio as gr

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine
    app = build_app(demo)
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["monospace"])  # no web-font download
    app.launch(server_name=host, server_port=port, prevent_thread_lock=not block, quiet=not block, theme=theme, css=PANEL_CSS,
               footer_links=[], ssr_mode=False, show_error=True)
    return app


def warm_up_asr(threads: int) -> threading.Thread:
    """Load Whisper in the background so the first voice command does not pay for it."""
    thread = threading.Thread(target=load_model, args=(threads,), name="tvcall-asr-warmup", daemon=True)
    thread.start()
    return thread

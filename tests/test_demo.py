"""The Gradio demo on the real base model (no adapter: its calls are arbitrary but always valid), driven in
headless Debian Chromium through Playwright. The screenshot is kept under runs/artifacts/test_demo/."""

import asyncio
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest

from tvcall.app.demo.page import Demo, launch, slot_highlights
from tvcall.app.engine.base import RouteResult
from tvcall.app.engine.hf_engine import TransformersEngine
from tvcall.app.engine.llamacpp_server import free_port

REPO = Path(__file__).parents[1]
ARTIFACTS = REPO / "runs" / "artifacts" / "test_demo"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def engine(base_model, tokenizer, registry):
    engine = TransformersEngine(base_model, tokenizer, registry)
    engine.decoder.null_bias = -1e4  # the untrained base model may abstain; here every command must become a call
    return engine


@pytest.fixture
def demo(engine):
    return Demo(engine)


def test_slots_are_highlighted_where_the_utterance_says_them(registry):
    spec = registry["sound.volume.set"]
    assert slot_highlights("set the volume to 35", [({"value": 35}, spec)], "en") == [("set the volume to ", None), ("35", "value")]
    assert slot_highlights("把音量调到二十", [({"value": 20}, spec)], "zh") == [("把音量调到", None), ("二十", "value")]
    source = registry["input.source.switch"]
    assert slot_highlights("switch to HDMI 2 please", [({"source": "hdmi2"}, source)], "en") == [
        ("switch to ", None), ("HDMI 2", "source"), (" please", None)]
    assert slot_highlights("open Netflix", [({"app": "Netflix"}, registry["app.application.open"])], "en")[-1] == ("Netflix", "app")
    assert slot_highlights("pause", [({}, registry["playback.media.pause"])], "en") == [("pause", None)]
    both = [({"value": 20}, spec), ({"source": "hdmi2"}, source)]  # a compound command's two calls
    assert slot_highlights("volume 20 then HDMI 2", both, "en") == [
        ("volume ", None), ("20", "value"), (" then ", None), ("HDMI 2", "source")]
    again = [({"value": 20}, spec), ({"value": 2}, spec)]  # the second value is inside the first: its own place
    assert slot_highlights("volume 20 then 2", again, "en") == [("volume ", None), ("20", "value"), (" then ", None), ("2", "value")]


def test_bad_input_gives_a_message_not_a_crash(demo, tmp_path):
    assert asyncio.run(demo.run_text("   ")).status == "Type a command first."
    assert "over 512 characters" in asyncio.run(demo.run_text("volume " * 100)).status
    assert asyncio.run(demo.run_audio(None, "en")).status == "Record or upload a command first."
    junk = tmp_path / "note.mp3"
    junk.write_text("not audio")
    assert "Could not use the audio: cannot read note.mp3 as audio" in asyncio.run(demo.run_audio(str(junk), "en")).status
    assert demo.executed == 0


def test_a_typed_command_runs_on_the_tv(demo, registry):
    outcome = asyncio.run(demo.run_text("set the volume to 35"))
    assert outcome.call["name"] in registry
    assert outcome.pending is not None or demo.executed == 1
    assert "routing" in outcome.timing and "".join(s for s, _ in outcome.highlights) == "set the volume to 35"


def test_risky_calls_wait_for_confirmation(demo):
    outcome = asyncio.run(demo.run_text("reset everything"))  # whatever the base model picks, then a risky call by hand
    held = RouteResult("system.device.factory_reset", {}, 0.9, 1.0, raw="")
    outcome = demo._describe("factory reset the TV", [held], "en", None)
    asyncio.run(demo._act(outcome, [held], "en"))
    assert outcome.pending and "risky" in outcome.question and demo.state.tv.state.factory_resets == 0
    assert "Confirmed and ran `system.device.factory_reset`" in asyncio.run(demo.confirm(outcome.pending))
    assert demo.state.tv.state.factory_resets == 1
    assert asyncio.run(demo.confirm(outcome.pending)).startswith("Nothing to confirm")  # single use
    asyncio.run(demo._act(outcome, [held], "en"))
    assert demo.cancel(outcome.pending) == "Cancelled `system.device.factory_reset`."
    assert demo.state.tv.state.factory_resets == 1


def test_a_call_under_the_act_threshold_asks_instead_of_running(demo):
    unsure = RouteResult("sound.volume.set", {"value": 35}, 0.3, 1.0, raw="", candidates=["sound.volume.increase"])
    outcome = demo._describe("volume thirty five maybe", [unsure], "en", None)
    demo.state.act_threshold = 0.5
    try:
        asyncio.run(demo._act(outcome, [unsure], "en"))
    finally:
        demo.state.act_threshold = 0.0
    assert outcome.status.startswith("Not sure enough to run `sound.volume.set`")
    assert "Did you mean `sound.volume.set`, `sound.volume.increase`?" in outcome.status
    assert demo.executed == 0 and not demo.state.tv.state.history



@contextmanager
def demo_page(demo):
    """The demo served on a free loopback port and opened in headless Debian Chromium; the page, then both closed."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Debian chromium is missing: `make system-packages` installs it"
    port = free_port()
    app = launch(demo, port=port, block=False)
    try:
        with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
            browser = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
                                                           viewport={"width": 1300, "height": 1000})
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/", timeout=60_000)
            yield page
            browser.close()
    finally:
        app.close()


def test_browser_types_a_command_and_the_tv_panel_changes(engine, tmp_path):
    shot = tmp_path / "demo-browser.png"
    with demo_page(Demo(engine)) as page:
        page.wait_for_selector("#tv-panel", timeout=60_000)
        assert page.get_attribute("#tv-calls", "data-value") == "0"
        page.fill("#command textarea", "set the volume to 35")
        page.click("#route")
        page.wait_for_function("document.querySelector('#status').innerText.trim().length > 0", timeout=60_000)
        if page.is_visible("#confirm"):  # a risky call: the panel changes only once confirmed
            page.click("#confirm")
        page.wait_for_function("document.querySelector('#tv-calls').dataset.value === '1'", timeout=60_000)
        called = page.get_attribute("#tv-last", "data-value")
        assert called and called in page.inner_text("#call")  # the panel shows the call the page printed
        page.screenshot(path=str(shot), full_page=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, ARTIFACTS / shot.name)
    assert shot.stat().st_size > 10_000

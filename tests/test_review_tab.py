"""The demo's Review tab: the queue from a real traffic log, a correction with a span marked by selecting text,
validated before it is saved; driven in headless Debian Chromium through Playwright."""

import json

import pytest

from tests.test_demo import demo_page, engine  # noqa: F401 - the module's engine fixture
from tests.test_traffic import rows, traffic_client
from tvcall.app.demo.page import Demo
from tvcall.app.demo.review import ReviewDesk, highlights
from tvcall.data.record import Span
from tvcall.data.traffic import connect, save_label


@pytest.fixture
def log(registry, tmp_path):
    path = tmp_path / "traffic.sqlite"
    with traffic_client(registry, path) as client:
        quiet = client.post("/v1/route", json={"text": "volume 30"}).json()["id"]
        wrong = client.post("/v1/route", json={"text": "bedroom light on"}).json()["id"]
        client.post("/v1/feedback", json={"id": wrong, "correct": False})
    return path, wrong, quiet


def test_the_desk_proposes_the_teachers_call_and_marks_only_what_was_selected(registry, log):
    path, wrong, quiet = log
    with connect(path) as connection:
        save_label(connection, registry, wrong, "teacher", "smarthome.light.turn_off", {"room": "bedroom"})
    desk = ReviewDesk(path, registry)
    draft = desk.draft()
    assert draft.request_id == wrong and draft.name == "smarthome.light.turn_off" and "client said" in draft.heading
    assert highlights(draft.text, draft.spans) == [("bedroom", "room"), (" light on", None)]
    assert desk.mark(draft.text, [], None, "room")[1].startswith("Select")
    assert desk.mark(draft.text, [], [3, 99], "room")[1].startswith("The selection [3, 99)")
    spans, message = desk.mark(draft.text, [Span(slot="room", start=8, end=13)], [0, 7], "room")  # replaces the slot's span
    assert spans == [Span(slot="room", start=0, end=7)] and message == "Marked room = “bedroom”."
    assert desk.draft(skipped=[wrong]).request_id == quiet
    assert desk.save(wrong, "smarthome.light.turn_on", '{"room": 5}', spans)[1].startswith("Not saved: call: room")
    assert desk.save(wrong, "smarthome.light.turn_on", "[1]", spans)[1] == "arguments: expected a JSON object"
    assert desk.save(wrong, "smarthome.light.turn_on", '{"room": "bedroom"}', spans) == (True, f"Saved smarthome.light.turn_on for {wrong}.")
    assert desk.draft().request_id == quiet  # the reviewed one left the queue
    assert ReviewDesk(path.parent / "none.sqlite", registry).draft().heading.startswith("No traffic log")


def test_browser_reviews_a_request_marking_its_slot_by_selecting_text(engine, registry, log):  # noqa: F811
    path, wrong, _ = log
    with demo_page(Demo(engine, review=ReviewDesk(path, registry, reviewer="browser"))) as page:
        page.get_by_role("tab", name="Review").click()
        page.wait_for_function("document.querySelector('#review-heading').innerText.includes('bedroom light on')", timeout=60_000)
        page.fill("#review-arguments textarea", '{"room": 5}')
        page.click("#review-save")
        page.wait_for_function("document.querySelector('#review-status').innerText.includes('Not saved')", timeout=30_000)
        assert rows(path, "labels") == []  # refused: nothing written

        page.fill("#review-arguments textarea", '{"room": "bedroom"}')
        page.locator("#review-text textarea").evaluate(
            "el => { el.focus(); el.setSelectionRange(0, 7); el.dispatchEvent(new Event('select', {bubbles: true})); }")
        page.wait_for_timeout(500)  # the selection event's round trip
        page.click("#review-mark")
        page.wait_for_function("document.querySelector('#review-status').innerText.includes('Marked room')", timeout=30_000)
        assert "bedroom" in page.inner_text("#review-spans")
        page.click("#review-save")
        page.wait_for_function("document.querySelector('#review-status').innerText.includes('Saved')", timeout=30_000)
        page.wait_for_function("document.querySelector('#review-heading').innerText.includes('volume 30')", timeout=30_000)
    (label,) = rows(path, "labels")
    assert (label["request_id"], label["source"], label["name"], label["labeller"]) == (wrong, "review", "smarthome.light.turn_on", "browser")
    assert json.loads(label["spans"]) == [{"slot": "room", "start": 0, "end": 7}]

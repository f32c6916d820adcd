"""The demo's Review tab, apart from Gradio: the traffic log's review queue, one request at a time, and a reviewer's
decision (a call, and slot spans marked by selecting text) validated and saved through `save_label`, the same path
as `tvcall traffic review`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tvcall.data.record import Span
from tvcall.data.review import describe
from tvcall.data.traffic import Logged, logged, opened, review_queue, save_label, value_spans
from tvcall.errors import InputError
from tvcall.functions.registry import Registry


@dataclass
class Draft:
    """What the tab shows for one request: the proposal a reviewer starts from."""

    request_id: str | None
    heading: str
    text: str = ""
    name: str = ""
    arguments: str = "{}"  # JSON, as the reviewer edits it
    spans: list[Span] = field(default_factory=list)


def highlights(text: str, spans: list[Span]) -> list[tuple[str, str | None]]:
    """`text` cut into (segment, slot or None) for Gradio's HighlightedText."""
    segments: list[tuple[str, str | None]] = []
    cursor = 0
    for span in sorted(spans, key=lambda s: s.start):
        if span.start > cursor:
            segments.append((text[cursor:span.start], None))
        segments.append((text[span.start:span.end], span.slot))
        cursor = span.end
    if cursor < len(text):
        segments.append((text[cursor:], None))
    return segments


class ReviewDesk:
    def __init__(self, log_path: Path, registry: Registry, reviewer: str = "demo") -> None:
        self.log_path, self.registry, self.reviewer = Path(log_path), registry, reviewer

    def queue(self) -> list[Logged]:
        with opened(self.log_path) as connection:
            return review_queue(logged(connection))

    def draft(self, skipped: list[str] | None = None) -> Draft:
        """The first request of the queue not in `skipped`, with the teacher's call (else the router's) proposed."""
        if not self.log_path.exists():
            return Draft(None, f"No traffic log at {self.log_path}: `tvcall serve` writes one as it answers.")
        queue = [item for item in self.queue() if item.id not in (skipped or [])]
        if not queue:
            return Draft(None, "Nothing left to review.")
        item = queue[0]
        proposed = item.teacher or {"name": item.name, "arguments": item.arguments}  # a teacher's call, else the router's
        name, arguments = proposed["name"], proposed["arguments"]
        return Draft(item.id, describe(item, 1, len(queue)), item.text, name or "", json.dumps(arguments, ensure_ascii=False),
                     value_spans(item.text, arguments))

    def mark(self, draft_text: str, spans: list[Span], selection: list[int] | None, slot: str | None) -> tuple[list[Span], str]:
        """Add the selected text as `slot`'s span (replacing that slot's earlier one); a message when it cannot."""
        if not selection or selection[0] >= selection[1]:
            return spans, "Select the slot's text in the utterance first."
        if not slot:
            return spans, "Choose the slot the selected text fills."
        start, end = selection
        if not 0 <= start < end <= len(draft_text):
            return spans, f"The selection [{start}, {end}) is outside the utterance."
        kept = [s for s in spans if s.slot != slot and (s.end <= start or end <= s.start)]
        return [*kept, Span(slot=slot, start=start, end=end)], f"Marked {slot} = “{draft_text[start:end]}”."

    def save(self, request_id: str | None, name: str, arguments: str, spans: list[Span]) -> tuple[bool, str]:
        """Validate the decision against the registry and the utterance, then keep it; (saved, message)."""
        if request_id is None:
            return False, "Nothing to save."
        try:
            parsed: Any = json.loads(arguments or "{}")
        except json.JSONDecodeError as exc:
            return False, f"arguments: not JSON ({exc.msg} at character {exc.pos})"
        if not isinstance(parsed, dict):
            return False, "arguments: expected a JSON object"
        try:
            with opened(self.log_path) as connection:
                save_label(connection, self.registry, request_id, "review", name.strip() or None, parsed, spans, self.reviewer)
        except InputError as exc:
            return False, f"Not saved: {exc.message}"
        return True, f"Saved {name.strip() or 'no function'} for {request_id}."

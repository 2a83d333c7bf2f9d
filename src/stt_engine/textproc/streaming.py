"""Streamed text that is the final text: a piece is sent only once no later segment can change it.

A stream (`stream=true`) sends text while the file is still decoding, but the final transcript is filtered (invented
phrases dropped), corrected, number-normalised and masked as a whole. Sending each segment's raw text early would let
a stream show a phrase the final text drops, or a number it masks, and the deltas would no longer add up to the done
text. So the streamed text is computed by the very same steps (`filter_transcript`, then `process_kept`) over the
segments final so far, and only the part that more segments can no longer change is sent:

- The filter judges a doubtful segment by its neighbours (a gap before or after it makes it a speech edge; the last
  segment always is one) and by runs of identical segments (a decoder loop). A segment's verdict is settled once a
  segment follows it whose text differs from its own: its neighbour is known and any run it belongs to is closed.
  The trailing run of equal segments is held back until a different one arrives or the transcript ends, except a
  segment confident enough that the filter keeps it wherever it stands (`always_kept`): that one goes out at once.
- Vocabulary and masking read the whole text, so a number may span two segments. Settled text is sent only when the
  text with the held-back segments included starts with it, and a settled segment that ends in a digit waits for the
  next batch.
"""

from __future__ import annotations

import logging
import re

from stt_engine.config import Settings
from stt_engine.textproc.hallucination import always_kept, compact, filter_transcript
from stt_engine.textproc.pipeline import TextOptions, phrases_file, process_kept, text_options
from stt_engine.types import Segment, Transcript, join_segments

log = logging.getLogger(__name__)

# A number may go on in the next segment ("010 1234" | "5678"): digits, or Korean digit words read one by one.
_OPEN_END = re.compile(r"(?:[\d@-]|(?:^|\s)[공영일이삼사오육륙칠팔구]+)[\s,.]*$")


class TextStream:
    """The processed text and segments of a stream, handed out in append-only pieces.

    `update` takes every segment final so far, in final order, with the ids the final transcript gives them; it
    returns the text to append and the processed segments to announce. `finish` takes the final processed transcript
    (`finish_transcript` of the whole) and returns the rest. Blocking (number grammars): call it off the event loop.
    """

    def __init__(self, settings: Settings, options: TextOptions | None = None) -> None:
        self.settings = settings
        self.options = options or text_options(settings)
        self.sent_text = ""
        self.sent_segments = 0

    def update(self, segments: list[Segment], language: str | None) -> tuple[str, list[Segment]]:
        safe = self._safe(segments, language)
        if safe is None:
            return "", []
        return self._advance(*safe)

    def finish(self, final: Transcript) -> tuple[str, list[Segment]]:
        """The rest of the final text and segments. What was sent is always a prefix of them, except when a number
        spans more than two segments: then the done text stands, and the log says so."""
        sent = final.segments[: self.sent_segments]
        if not final.text.startswith(self.sent_text) or len(sent) < self.sent_segments:
            log.warning("a stream's sent text is not a prefix of its final text; the done event has the whole text")
            return "", final.segments[self.sent_segments:]
        return self._advance(final.text, final.segments)

    def _advance(self, text: str, segments: list[Segment]) -> tuple[str, list[Segment]]:
        if not text.startswith(self.sent_text):
            return "", []
        delta = text[len(self.sent_text):]
        fresh = segments[self.sent_segments:]
        self.sent_text = text
        self.sent_segments = max(self.sent_segments, len(segments))
        return delta, fresh

    def _processed(self, segments: list[Segment], language: str | None) -> Transcript:
        transcript = _transcript(segments, language)
        return process_kept(transcript, self.settings, self.options)[0]

    def _safe(self, segments: list[Segment], language: str | None) -> tuple[str, list[Segment]] | None:
        """The processed text and segments of the longest settled prefix that later segments cannot change."""
        if not segments:
            return None
        run = len(segments) - 1
        key = compact(segments[-1].text)
        while run > 0 and compact(segments[run - 1].text) == key:
            run -= 1
        held = run  # the trailing run waits, but for those of its first segments that the filter keeps regardless
        while held < len(segments) and always_kept(segments[held]):
            held += 1
        if held == 0:
            return None
        filtered, _ = filter_transcript(
            _transcript(segments, language), extra_file=phrases_file(self.settings),
            enabled=self.options.hallucination_filter,
        )
        settled_ids = {s.id for s in segments[:held]}
        kept = filtered.segments
        settled = [s for s in kept if s.id in settled_ids]
        context = self._processed(kept, language).text
        for count in (len(settled), len(settled) - 1):
            if count < 0 or (count and _OPEN_END.search(settled[count - 1].text)):
                continue
            prefix = self._processed(settled[:count], language)
            if context.startswith(prefix.text):
                return prefix.text, prefix.segments
        return None


def _transcript(segments: list[Segment], language: str | None) -> Transcript:
    end = float(segments[-1].end) if segments else 0.0
    return Transcript(
        text=join_segments(segments, language), language=language, language_probability=0.0, duration=end,
        duration_after_vad=end, segments=list(segments),
    )

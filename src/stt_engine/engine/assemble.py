"""Step 3, segments -> transcript: streams' segments in order, on the original audio's timeline, tidied and joined.

`final_segments` may run while a job is still decoding: a window's segments are final once it is decoded (the next
window starts where they end), so the segments of the leading finished streams and those decoded so far of the first
unfinished one never change. Streaming responses send those as they come; the transcript at the end is
built from the same function, so what was streamed is what is returned.
"""

from __future__ import annotations

from dataclasses import dataclass

from faster_whisper.vad import SpeechTimestampsMap

from stt_engine.audio import SAMPLE_RATE
from stt_engine.engine.job import Job
from stt_engine.types import Segment, Transcript, Word
from stt_engine.types import join_segments as join_segments  # its home before stt_engine.types
from stt_engine.types import segment_separator as segment_separator
from stt_engine.types import tidy_text as tidy_text


@dataclass
class ScoredSegment(Segment):
    """A segment of a request that asked for `include[]=logprobs`: its text tokens' OpenAI `logprobs` entries."""

    logprobs: list[dict] | None = None


def final_segments(job: Job) -> list[Segment]:
    """The final segments, in order, mapped to the original timeline."""
    raw: list[dict] = []
    for stream in job.streams:
        done = stream.done
        raw.extend(_shifted(segment, stream.offset) for segment in list(stream.segments))
        if not done:
            break
    ts_map = SpeechTimestampsMap(job.speech, SAMPLE_RATE) if job.speech else None
    out: list[Segment] = []
    for seg in raw:
        text = tidy_text(seg["text"])
        if not text:
            continue
        words = [Word(**w) for w in seg["words"]] if job.options.word_timestamps and seg.get("words") else None
        start, end = seg["start"], seg["end"]
        if ts_map is not None:
            if words:
                for word in words:
                    index = ts_map.get_chunk_index((word.start + word.end) / 2)
                    word.start = ts_map.get_original_time(word.start, index)
                    word.end = ts_map.get_original_time(word.end, index)
                start, end = words[0].start, words[-1].end
            else:
                start, end = ts_map.get_original_time(start), ts_map.get_original_time(end, is_end=True)
        end = min(max(end, start), round(job.duration, 3))
        scored = {"logprobs": seg["logprobs"]} if seg.get("logprobs") is not None else {}
        out.append(
            (ScoredSegment if scored else Segment)(
                id=len(out), seek=seg["seek"], start=round(start, 3), end=round(end, 3), text=text,
                tokens=seg["tokens"], avg_logprob=seg["avg_logprob"], compression_ratio=seg["compression_ratio"],
                no_speech_prob=seg["no_speech_prob"], words=words, temperature=seg["temperature"], **scored,
            )
        )
    return out


def _shifted(segment: dict, offset: float) -> dict:
    """A stream's segment (times from the stream's start) on the job's speech timeline."""
    shifted = dict(segment, start=segment["start"] + offset, end=segment["end"] + offset)
    if segment.get("words"):
        shifted["words"] = [dict(w, start=w["start"] + offset, end=w["end"] + offset) for w in segment["words"]]
    return shifted


def transcript(job: Job) -> Transcript:
    """The whole result of a finished job. A request without speech reports no language unless it asked for one:
    a language 'detected' from music or noise would be a guess."""
    segments = final_segments(job)
    language = job.language if segments else job.options.language
    return Transcript(
        text=join_segments(segments, language),
        language=language,
        language_probability=job.language_probability if segments and language else 0.0,
        duration=job.duration,
        duration_after_vad=job.duration_after_vad,
        segments=segments,
        task=job.options.task,
    )

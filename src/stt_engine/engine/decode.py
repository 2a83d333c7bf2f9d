"""Step 2, windows -> segments: one 30 s window of each of several streams, decoded in one batch.

Each window is decoded as faster-whisper's `generate_segments` decodes a window of a file:
1. log-Mel features of the window, padded to 30 s; one encoder pass for the whole batch. A job whose language is
   unknown takes it from its first window's encoder output (the library encodes that window twice).
2. the prompt: the request's `prompt` (or, with `condition_on_previous_text`, the stream's previous text) and the
   hotwords, cut together to Whisper's 223 tokens;
3. generation at the first temperature for the whole batch, then, per window whose result looks broken
   (compression ratio > 2.4, or mean log-probability < -1 unless it is silence), sampling at each higher
   temperature with `best_of` candidates; the result kept is the library's choice among *all* attempts;
4. Whisper's no-speech rule, then the tokens split at their timestamps, and the seek moved as the library moves
   it: past the window when it ends on a single timestamp ("no more speech here"), else to its last timestamp;
5. word timings, when asked for, by cross-attention alignment. Unlike the library, they never move the seek, so
   the same audio gives the same words with or without them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.audio import pad_or_trim
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import get_compression_ratio, get_suppressed_tokens

from stt_engine.engine.job import HOP, WINDOW_FRAMES, Stream
from stt_engine.openai_fields import token_logprobs
from stt_engine.options import TranscribeOptions

COMPRESSION_RATIO_THRESHOLD = 2.4
LOG_PROB_THRESHOLD = -1.0
NO_SPEECH_THRESHOLD = 0.6
PROMPT_RESET_ON_TEMPERATURE = 0.5
MAX_INITIAL_TIMESTAMP = 1.0
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"
_CONTEXT = 400  # samples either side of a window, so its edge frames see real audio as in the whole-file STFT


@dataclass
class Attempt:
    """One decode of one window at one temperature, with the figures the fallback rule looks at."""

    result: ctranslate2.models.WhisperGenerationResult
    avg_logprob: float
    temperature: float
    compression_ratio: float

    @property
    def tokens(self) -> list[int]:
        return self.result.sequences_ids[0]

    @property
    def silence(self) -> bool:
        return self.result.no_speech_prob > NO_SPEECH_THRESHOLD and self.avg_logprob < LOG_PROB_THRESHOLD

    @property
    def failed(self) -> bool:
        if self.silence:
            return False
        return self.compression_ratio > COMPRESSION_RATIO_THRESHOLD or self.avg_logprob < LOG_PROB_THRESHOLD


def choose(attempts: Sequence[Attempt]) -> Attempt:
    """faster-whisper's pick: the first attempt that did not fail; when all failed, the most probable of those
    that are not repetitive (or of all), reported with the last temperature tried."""
    for attempt in attempts:
        if not attempt.failed:
            return attempt
    repetitive_free = [a for a in attempts if a.compression_ratio <= COMPRESSION_RATIO_THRESHOLD]
    best = max(repetitive_free or attempts, key=lambda a: a.avg_logprob)
    return Attempt(best.result, best.avg_logprob, attempts[-1].temperature, best.compression_ratio)


class WindowDecoder:
    """Decodes batches of stream windows with one loaded `WhisperModel`."""

    def __init__(self, model: WhisperModel, tokenizer_for) -> None:
        self.model = model
        self.tokenizer_for = tokenizer_for  # (language, task) -> Tokenizer, cached by the engine

    def features(self, stream: Stream) -> np.ndarray:
        """The window at the stream's seek: (80, ≤3000) log-Mel frames, as the whole-file features would give."""
        job = stream.job
        size = min(WINDOW_FRAMES, stream.frames - stream.seek)
        first = stream.start + stream.seek * HOP
        lo = max(stream.start, first - _CONTEXT)
        hi = min(stream.end, first + size * HOP + _CONTEXT)
        frames = self.model.feature_extractor(job.speech_samples(lo, hi))
        skip = (first - lo) // HOP
        return frames[:, skip: skip + size]

    def decode(self, streams: Sequence[Stream]) -> None:
        """Decode the window at each stream's seek (all streams share one batch key); advance each stream."""
        options = streams[0].job.options
        sizes = [min(WINDOW_FRAMES, s.frames - s.seek) for s in streams]
        features = np.stack([pad_or_trim(self.features(s)) for s in streams])
        encoder_output = self.model.encode(features)
        unknown = [i for i, s in enumerate(streams) if s.job.language is None]
        if unknown:
            detected = self.model.model.detect_language(encoder_output)
            for i in unknown:
                token, probability = detected[i][0]
                streams[i].job.language, streams[i].job.language_probability = token[2:-2], float(probability)
        tokenizers = [self.tokenizer_for(s.job.language, options.task) for s in streams]
        prompts = [self._prompt(s, t) for s, t in zip(streams, tokenizers)]
        attempts = self._generate_with_fallback(options, features, encoder_output, prompts, tokenizers)
        for i, (stream, tokenizer, attempt, size) in enumerate(zip(streams, tokenizers, attempts, sizes)):
            own = encoder_output if len(streams) == 1 else None
            if options.logprobs and own is None:
                own = self._sliced(encoder_output, i)
            self._advance(stream, tokenizer, attempt, size, own, features[i], prompts[i])

    # --- prompt and generation ----------------------------------------------------------------------------
    def _prompt(self, stream: Stream, tokenizer: Tokenizer) -> list[int]:
        """faster-whisper's prompt layout (previous text after the hotwords), cut so the two together keep the
        last 223 tokens, where the library lets a long pair overflow the decoder's 448 positions.

        The request's prompt goes to the first window only, as in the library without conditioning; the hotwords
        go to every window."""
        options = stream.job.options
        if options.condition_on_previous_text:
            previous = stream.tokens[stream.prompt_reset_since:]
        else:
            previous = []
        if options.initial_prompt and stream.first_window:
            previous = tokenizer.encode(" " + options.initial_prompt.strip())
        hotwords = tokenizer.encode(" " + options.hotwords.strip()) if options.hotwords else []
        context = (hotwords + previous)[-(self.model.max_length // 2 - 1):]
        return self.model.get_prompt(tokenizer, context, without_timestamps=False)

    def _generate(
        self, options: TranscribeOptions, encoder_output: ctranslate2.StorageView, prompts: list[list[int]],
        tokenizers: list[Tokenizer], temperature: float,
    ) -> list[Attempt]:
        """One `generate` call: beam search at temperature 0, else `best_of` samples, as the library decodes."""
        if temperature > 0:
            kwargs = {"beam_size": 1, "num_hypotheses": options.best_of, "sampling_topk": 0,
                      "sampling_temperature": temperature}
        else:
            kwargs = {"beam_size": options.beam_size, "patience": 1.0}
        results = self.model.model.generate(
            encoder_output, prompts, length_penalty=1.0, repetition_penalty=1.0, no_repeat_ngram_size=0,
            max_length=self.model.max_length, return_scores=True, return_no_speech_prob=True, suppress_blank=True,
            suppress_tokens=get_suppressed_tokens(tokenizers[0], [-1]),
            max_initial_timestamp_index=int(round(MAX_INITIAL_TIMESTAMP / self.model.time_precision)), **kwargs,
        )
        attempts = []
        for result, tokenizer in zip(results, tokenizers):
            tokens = result.sequences_ids[0]
            avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
            text = tokenizer.decode(tokens).strip()
            attempts.append(Attempt(result, avg_logprob, temperature, get_compression_ratio(text)))
        return attempts

    def _generate_with_fallback(
        self, options: TranscribeOptions, features: np.ndarray, encoder_output: ctranslate2.StorageView,
        prompts: list[list[int]], tokenizers: list[Tokenizer],
    ) -> list[Attempt]:
        """The first temperature for the whole batch; each higher one only for the windows still failing."""
        temperatures = options.temperatures
        tried = [[a] for a in self._generate(options, encoder_output, prompts, tokenizers, temperatures[0])]
        failing = [i for i, attempts in enumerate(tried) if attempts[-1].failed]
        if failing and len(temperatures) > 1:
            subset = self.model.encode(features[failing]) if len(failing) < len(prompts) else encoder_output
            for temperature in temperatures[1:]:
                retry = self._generate(
                    options, subset, [prompts[i] for i in failing], [tokenizers[i] for i in failing], temperature
                )
                for i, attempt in zip(failing, retry):
                    tried[i].append(attempt)
                still = [k for k, i in enumerate(failing) if tried[i][-1].failed]
                if not still:
                    break
                if len(still) < len(failing):
                    subset = self.model.encode(features[[failing[k] for k in still]])
                failing = [failing[k] for k in still]
        return [choose(attempts) for attempts in tried]

    # --- segments, seek and words ---------------------------------------------------------------------------
    def _advance(
        self, stream: Stream, tokenizer: Tokenizer, attempt: Attempt, size: int,
        encoder_output: ctranslate2.StorageView | None, features: np.ndarray, prompt: list[int] | None = None,
    ) -> None:
        """Whisper's no-speech rule, then segments at timestamps and the new seek, as `generate_segments` does."""
        options = stream.job.options
        if attempt.result.no_speech_prob > NO_SPEECH_THRESHOLD and not attempt.avg_logprob > LOG_PROB_THRESHOLD:
            stream.seek += size
            return
        time_offset = stream.seek * self.model.feature_extractor.time_per_frame
        segments, seek, _ = self.model._split_segments_by_timestamps(
            tokenizer=tokenizer, tokens=attempt.tokens, time_offset=time_offset, segment_size=size,
            segment_duration=size * self.model.feature_extractor.time_per_frame, seek=stream.seek,
        )
        if options.logprobs and segments and prompt is not None:
            if encoder_output is None:
                encoder_output = self.model.encode(features[np.newaxis])
            self._score(segments, tokenizer, prompt, encoder_output, size)
        if options.word_timestamps and segments:
            if encoder_output is None:
                encoder_output = self.model.encode(features[np.newaxis])
            stream.last_speech_timestamp = self.model.add_word_timestamps(
                [segments], tokenizer, encoder_output, size, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS,
                stream.last_speech_timestamp,
            ) or stream.last_speech_timestamp
        kept = []
        for segment in segments:
            text = tokenizer.decode(segment["tokens"])
            if segment["start"] == segment["end"] or not text.strip():
                continue
            stream.tokens.extend(segment["tokens"])
            kept.append(
                dict(
                    segment, text=text, seek=stream.seek, avg_logprob=attempt.avg_logprob,
                    compression_ratio=attempt.compression_ratio, no_speech_prob=attempt.result.no_speech_prob,
                    temperature=attempt.temperature,
                )
            )
        if not options.condition_on_previous_text or attempt.temperature > PROMPT_RESET_ON_TEMPERATURE:
            stream.prompt_reset_since = len(stream.tokens)
        stream.segments.extend(kept)
        stream.seek = seek

    # --- logprobs (include[]=logprobs) ------------------------------------------------------------------------
    def _sliced(self, encoder_output: ctranslate2.StorageView, index: int) -> ctranslate2.StorageView | None:
        """Window `index` of a batch's encoder output, copied out on CPU (a 1.5k x d_model copy, far cheaper than
        encoding the window again); None elsewhere, where the caller encodes the window when it needs it."""
        if self.model.model.device != "cpu":
            return None
        return ctranslate2.StorageView.from_array(np.ascontiguousarray(np.asarray(encoder_output)[index: index + 1]))

    def _score(
        self, segments: list[dict], tokenizer: Tokenizer, prompt: list[int], encoder_output: ctranslate2.StorageView,
        size: int,
    ) -> None:
        """Each segment's text tokens with their log-probabilities, as segment["logprobs"].

        The beam search does not report per-token scores (CTranslate2 returns step logits only for greedy search),
        so the chosen tokens are scored again in one teacher-forced decoder pass (`Whisper.align`, which
        faster-whisper uses for word probabilities) after the same prompt: a fraction of the window's decoding
        cost, paid only by requests that ask for logprobs."""
        texts = [[t for t in segment["tokens"] if t < tokenizer.eot] for segment in segments]
        flat = [t for tokens in texts for t in tokens]
        probabilities: list[float] = []
        if flat:
            probabilities = list(self.model.model.align(encoder_output, prompt, [flat], size)[0].text_token_probs)
        position = 0
        for segment, tokens in zip(segments, texts):
            scores = [math.log(max(p, 1e-30)) for p in probabilities[position: position + len(tokens)]]
            segment["logprobs"] = token_logprobs(tokenizer.tokenizer, tokens, scores)
            position += len(tokens)

"""Live transcription over WebSocket in OpenAI's Realtime wire format (transcription sessions).

- `protocol`: session configuration (GA and beta dialects) and the server events we send.
- `audio_formats`: PCM16 at 24/16 kHz and G.711 μ-law/A-law, resampled to 16 kHz as they arrive.
- `vad`: Silero VAD (the model faster-whisper ships) run on a stream, and the turn tracker that cuts turns.
- `agreement`: LocalAgreement-2 over successive hypotheses of a growing turn (pure functions).
- `session`: one connection's state machine, independent of the socket so it can be tested alone.
- `client`: the `stt-engine listen` command.
"""

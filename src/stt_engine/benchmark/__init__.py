"""`stt-engine bench` and what the bench/ scripts share, kept out of the server's own modules.

- `clips`: the one `manifest.tsv` reader (`read_manifest`, `Clip`, `default_audio_dir`, `pick_short`).
- `server`: the one "start `stt-engine serve` and wait until ready" (`ServerProcess`, `serving`), `RssSampler`.
- `library`: faster-whisper as the baseline, sequential and as the ceiling (N one-thread processes).
- `server_runs`: the server at N clients, long clips alone, fairness.
- `report`: rows, the targets (server / ceiling, one request alone / library), table and chart.
- `cli`: the `stt-engine bench` command.
"""

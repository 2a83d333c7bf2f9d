"""Pure policy of diarization: clustering speaker embeddings, naming clusters, turning window labels into turns.

No model and no threads here: everything takes numpy arrays and returns plain values, so it is tested directly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (cosine similarity becomes a dot product); zero rows stay zero."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


BAND = 0.1
DROP = 0.75


def should_merge(similarity: float, previous: float | None, threshold: float) -> bool:
    """Whether the most similar pair of clusters is one speaker: surely at `threshold + BAND` or more, never below
    `threshold`; in between only when the similarity did not drop below `DROP` x the previous merge's (a sharp
    drop is the gap between one voice's windows and another's, e.g. overlapped speech against the voice alone)."""
    if similarity >= threshold + BAND:
        return True
    if similarity < threshold:
        return False
    return previous is None or similarity >= DROP * previous


def average_linkage(
    embeddings: np.ndarray, threshold: float, *, min_clusters: int = 1, max_clusters: int | None = None
) -> np.ndarray:
    """Agglomerative clustering of unit rows by average cosine similarity; returns a label per row (0, 1, ...).

    Merges the most similar pair of clusters while `should_merge` says so, and beyond that while there are more
    than `max_clusters`; never goes below `min_clusters` (nor below one). Labels are numbered in order of first
    row. O(n^2) memory: callers keep n to about a thousand.
    """
    n = len(embeddings)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    low = max(1, min(min_clusters, n))
    high = n if max_clusters is None else max(low, min(max_clusters, n))
    sim = (embeddings @ embeddings.T).astype(np.float64)
    np.fill_diagonal(sim, -np.inf)
    sizes = np.ones(n)
    alive = np.ones(n, dtype=bool)
    parent = np.arange(n)
    count = n
    previous: float | None = None
    while count > low:
        flat = int(np.argmax(sim))
        a, b = divmod(flat, n)
        best = float(sim[a, b])
        if count <= high and not should_merge(best, previous, threshold):
            break
        previous = best
        # Lance-Williams update for average linkage: the merged row is the size-weighted mean of the two
        merged = (sizes[a] * sim[a] + sizes[b] * sim[b]) / (sizes[a] + sizes[b])
        sim[a] = merged
        sim[:, a] = merged
        sim[a, a] = -np.inf
        sim[b] = -np.inf
        sim[:, b] = -np.inf
        sizes[a] += sizes[b]
        alive[b] = False
        parent[parent == b] = a
        count -= 1
    _, first = np.unique(parent, return_index=True)
    order = {int(parent[i]): rank for rank, i in enumerate(sorted(first))}
    return np.array([order[int(p)] for p in parent], dtype=np.int64)


def centroids(embeddings: np.ndarray, labels: np.ndarray, count: int) -> np.ndarray:
    """Unit-length mean embedding of each label 0..count-1."""
    out = np.zeros((count, embeddings.shape[1]), dtype=np.float32)
    np.add.at(out, labels, embeddings)
    return normalize(out)


def name_clusters(
    cluster_centroids: np.ndarray, references: dict[str, np.ndarray], threshold: float
) -> dict[int, str]:
    """Give known names to clusters: best matches first, one name per cluster and one cluster per name, only where
    the cosine similarity of centroid and reference embedding is at least `threshold`."""
    pairs = []
    for name, ref in references.items():
        for cluster, centre in enumerate(cluster_centroids):
            pairs.append((float(centre @ ref), cluster, name))
    named: dict[int, str] = {}
    used: set[str] = set()
    for score, cluster, name in sorted(pairs, reverse=True):
        if score < threshold or cluster in named or name in used:
            continue
        named[cluster] = name
        used.add(name)
    return named


def letter(index: int) -> str:
    """A, B, ..., Z, AA, AB, ...: a speaker label in order of first appearance."""
    out = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        out = chr(ord("A") + rest) + out
    return out


def smooth(labels: Sequence[int], min_run: int) -> list[int]:
    """Relabel runs shorter than `min_run` that sit between two runs of one same label (a short flip) to that label."""
    out = list(labels)
    if min_run <= 1 or len(out) < 3:
        return out
    changed = True
    while changed:
        changed = False
        runs: list[tuple[int, int, int]] = []  # (label, start, end)
        for i, lab in enumerate(out):
            if runs and runs[-1][0] == lab:
                runs[-1] = (lab, runs[-1][1], i + 1)
            else:
                runs.append((lab, i, i + 1))
        for k in range(1, len(runs) - 1):
            lab, start, end = runs[k]
            if end - start < min_run and runs[k - 1][0] == runs[k + 1][0] != lab:
                out[start:end] = [runs[k - 1][0]] * (end - start)
                changed = True
                break
    return out


def merge_turns(turns: list[tuple[float, float, str]], max_gap: float) -> list[tuple[float, float, str]]:
    """Sorted turns with neighbours of one speaker joined when the silence between them is at most `max_gap`."""
    out: list[tuple[float, float, str]] = []
    for start, end, who in sorted(turns):
        if out and out[-1][2] == who and start - out[-1][1] <= max_gap:
            out[-1] = (out[-1][0], max(out[-1][1], end), who)
        elif out and start < out[-1][1]:
            out.append((out[-1][1], end, who))  # never overlap the previous turn
        else:
            out.append((start, end, who))
    return [t for t in out if t[1] > t[0]]

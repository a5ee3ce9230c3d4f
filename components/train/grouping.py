"""The order samples are trained in: per-epoch permutations, optionally length- and modality-grouped.

LLaVA's `group_by_modality_length` (reference §3.8): image and text-only samples are length-grouped
separately into megabatches of num_chunks × batch_size samples (num_chunks = world size × gradient
accumulation, as the reference passes it), each megabatch sorted by length and split into num_chunks
micro-batches of similar total length; the full megabatches of both modalities are shuffled together and the
last megabatch of each modality goes at the end. So every micro-batch holds one modality, except at most one
in the final megabatches. Unlike the reference, the tail is laid out image part first, then text part (the
reference sorts it by index, mixing modalities across many micro-batches), and randomness comes from a
generator seeded with (seed, epoch), never the global RNG.

Micro-batch c of a megabatch goes to rank c % world at accumulation micro-step c // world (see
`rank_positions`), the round-robin a distributed sampler gives.
"""

from __future__ import annotations

import numpy as np


def _split_balanced(indices: np.ndarray, lengths: np.ndarray, num_chunks: int) -> list[np.ndarray]:
    """Split length-sorted `indices` into num_chunks equal-size chunks of similar total length (greedy:
    each index joins the lightest chunk that still has room). Uneven counts fall back to striding."""
    if len(indices) % num_chunks:
        return [indices[i::num_chunks] for i in range(num_chunks)]
    size = len(indices) // num_chunks
    chunks: list[list[int]] = [[] for _ in range(num_chunks)]
    totals = [0] * num_chunks
    for i in indices:
        open_chunks = [c for c in range(num_chunks) if len(chunks[c]) < size]
        c = min(open_chunks, key=lambda c: totals[c])
        chunks[c].append(int(i))
        totals[c] += int(lengths[i])
    return [np.asarray(c, np.int64) for c in chunks]


def length_grouped(lengths: np.ndarray, batch_size: int, num_chunks: int, rng: np.random.Generator) -> np.ndarray:
    """Positions 0..len-1: random megabatches of num_chunks × batch_size, each sorted by length (longest
    first) and split into num_chunks balanced micro-batches."""
    lengths = np.asarray(lengths)
    perm = rng.permutation(len(lengths))
    mega = num_chunks * batch_size
    out = []
    for start in range(0, len(perm), mega):
        block = perm[start : start + mega]
        block = block[np.argsort(-lengths[block], kind="stable")]
        out.extend(_split_balanced(block, lengths, num_chunks))
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def modality_length_grouped(
    lengths: np.ndarray, has_image: np.ndarray, batch_size: int, num_chunks: int, rng: np.random.Generator
) -> np.ndarray:
    """A permutation of 0..len-1 whose micro-batches (consecutive runs of batch_size) hold one modality each,
    except at most one in the tail; plain `length_grouped` when all samples share a modality."""
    lengths, has_image = np.asarray(lengths), np.asarray(has_image, bool)
    if len(lengths) != len(has_image):
        raise ValueError(f"{len(lengths)} lengths but {len(has_image)} modality flags")
    image, text = np.flatnonzero(has_image), np.flatnonzero(~has_image)
    if len(image) == 0 or len(text) == 0:
        return length_grouped(lengths, batch_size, num_chunks, rng)
    mega = num_chunks * batch_size
    megabatches: list[np.ndarray] = []
    tail = []
    for idx in (image, text):
        order = idx[length_grouped(lengths[idx], batch_size, num_chunks, rng)]
        parts = [order[i : i + mega] for i in range(0, len(order), mega)]
        megabatches.extend(parts[:-1])
        last = parts[-1]
        tail.append(last[np.argsort(-lengths[last], kind="stable")])
    shuffled = [megabatches[i] for i in rng.permutation(len(megabatches))]
    return np.concatenate([*shuffled, *tail])


def epoch_order(
    lengths: np.ndarray,
    has_image: np.ndarray,
    *,
    batch_size: int,
    num_chunks: int,
    seed: int,
    epoch: int,
    group_by_modality: bool,
) -> np.ndarray:
    """The sample order of one epoch, a function of (seed, epoch) only: grouped, or a plain permutation."""
    rng = np.random.default_rng([seed, epoch])
    if group_by_modality:
        return modality_length_grouped(lengths, has_image, batch_size, num_chunks, rng)
    return rng.permutation(len(lengths))


def sample_stream(
    lengths: np.ndarray, has_image: np.ndarray, *, epochs: int, batch_size: int, num_chunks: int, seed: int,
    group_by_modality: bool,
) -> np.ndarray:
    """The epochs' orders back to back: stream position p is sample stream[p], in epoch p // N."""
    return np.concatenate([
        epoch_order(lengths, has_image, batch_size=batch_size, num_chunks=num_chunks, seed=seed, epoch=e,
                    group_by_modality=group_by_modality)
        for e in range(epochs)
    ])


def rank_positions(
    start_step: int, end_step: int, *, rank: int, world: int, batch_size: int, accumulation: int
) -> np.ndarray:
    """Stream positions rank `rank` trains on for optimizer steps [start_step, end_step), in order.

    Step k takes stream positions [k·G, (k+1)·G) with G = batch × world × accumulation; its micro-step m on
    rank r takes the batch_size positions starting at k·G + (m·world + r)·batch_size.
    """
    global_batch = batch_size * world * accumulation
    steps = np.arange(start_step, end_step, dtype=np.int64)[:, None, None]
    micro = np.arange(accumulation, dtype=np.int64)[None, :, None]
    within = np.arange(batch_size, dtype=np.int64)[None, None, :]
    pos = steps * global_batch + (micro * world + rank) * batch_size + within
    return pos.reshape(-1)

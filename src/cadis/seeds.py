"""Seeds of the random streams a run derives from its one seed: one stream per image, step or batch.

A stream seeded by (seed, i) alone does not depend on the order, sharding or interruptions of the run,
so a resumed or sharded run repeats an uninterrupted one exactly.
"""

from __future__ import annotations

# A prime above every index used, so distinct (seed, i) with 0 <= i < STRIDE never share a stream.
STRIDE = 1_000_003
# The largest seed: torch seeds are 64-bit, and seed * STRIDE + i stays far inside them.
MAX_SEED = 2**32 - 1


def derive_seed(seed: int, i: int) -> int:
    """The seed of stream `i` (an image index, a training step, a batch start) of a run seeded `seed`."""
    return seed * STRIDE + i

"""The training data stream (resumable shuffled order) and the per-step seeds that make a resumed run re-sample
exactly what an uninterrupted one would."""

from __future__ import annotations

import hashlib

import numpy as np

from deepscaler.training.checkpoint import DataPosition


def derive_seed(*parts: object) -> int:
    """A stable 31-bit seed from any parts, e.g. ``derive_seed(seed, "rollout", step, batch)``.

    Hash-based (not ``hash()``, which is salted per process) so the same parts give the same seed in every
    process and on every machine.
    """
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % (2**31 - 1)


class DataStream:
    """Endless shuffled pass over ``num_items`` problems, drop-last per epoch, positioned by a DataPosition.

    The order of epoch ``e`` is a pure function of ``(position.seed, e)``, so saving ``(epoch, index, seed)``
    is enough to resume mid-epoch without replaying or skipping data.
    """

    def __init__(self, num_items: int, position: DataPosition, shuffle: bool = True):
        if num_items <= 0:
            raise ValueError("the training set is empty (after dropping prompts longer than data.max_prompt_length); "
                             "check data.train and data.max_prompt_length")
        self.num_items, self.position, self.shuffle = num_items, position, shuffle
        self._order_epoch = -1
        self._order: np.ndarray = np.arange(num_items)

    def order(self, epoch: int) -> np.ndarray:
        if epoch != self._order_epoch:
            if self.shuffle:
                rng = np.random.default_rng([self.position.seed, epoch])
                self._order = rng.permutation(self.num_items)
            else:
                self._order = np.arange(self.num_items)
            self._order_epoch = epoch
        return self._order

    def take(self, count: int) -> list[int]:
        """The next ``count`` item indices; starts a new epoch when fewer than ``count`` remain (drop-last)."""
        if count > self.num_items:
            raise ValueError(f"a batch of {count} prompts is larger than the training set ({self.num_items}); "
                             f"lower data.train_batch_size to at most {self.num_items}")
        if self.position.index + count > self.num_items:
            self.position.epoch += 1
            self.position.index = 0
        order = self.order(self.position.epoch)
        picked = order[self.position.index: self.position.index + count].tolist()
        self.position.index += count
        return picked

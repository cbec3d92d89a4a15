"""Token-balanced micro-batches of packed rollouts across ranks."""

from __future__ import annotations

import heapq

from transformers.trainer_pt_utils import BatchRebalanceSampler

__all__ = ["PackedBatchRebalanceSampler"]


class PackedBatchRebalanceSampler(BatchRebalanceSampler):
    """
    transformers' `BatchRebalanceSampler`, balancing packed micro-batches by their total tokens.

    `BatchRebalanceSampler` prices a micro-batch as padded (`rollouts x longest rollout`) and cuts the length-sorted
    global batch into contiguous groups. A packed micro-batch (`padding_free`) computes the sum of its rollouts'
    tokens, so this sampler deals the rollouts of each global batch, longest first, to the micro-batch with the
    fewest tokens so far (longest-processing-time scheduling): every rank's micro-batch at every accumulation slot
    then holds nearly the same number of tokens. Everything else is transformers' own (the same shuffled global
    batches, `effective_batch_size` rollouts per optimizer step, the `Trainer` treats it as its own sampler).
    `PRMTrainer` uses it for `train_sampling_strategy: batch_rebalance` with `padding_free: true`.

    Example:

    ```python
    >>> lengths = [900, 100, 500, 500]
    >>> sampler = PackedBatchRebalanceSampler(lengths, effective_batch_size=4, dp_size=2, grad_accum=1, shuffle=False)
    >>> [[lengths[i] for i in micro_batch] for micro_batch in sampler]  # rank 0's micro-batch: 1,000 tokens
    [[900, 100]]

    ```
    """

    def _assign(self, indices: list[int], lengths: list[int]) -> list[list[list[int]]]:
        groups = [[] for _ in range(self.dp_size * self.grad_accum)]
        tokens = [(0, k) for k in range(len(groups))]  # a heap of (tokens so far, group)
        for index, length in sorted(zip(indices, lengths, strict=True), key=lambda pair: -pair[1]):
            total, k = heapq.heappop(tokens)
            groups[k].append(index)
            heapq.heappush(tokens, (total + length, k))
        # every slot's micro-batches cost about the same on every rank: deal them in slot-major order
        return [
            [groups[slot * self.dp_size + rank] for slot in range(self.grad_accum)] for rank in range(self.dp_size)
        ]

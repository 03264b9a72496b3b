"""GDumb's class-balanced rule, sample by sample (the CLIB code's gdumb and rm memory)."""
from __future__ import annotations

import torch

from methods.memory.base import MemoryManager, register_manager


def balanced_insert(slot_labels: list[int], new_labels: list[int], size: int, draws: list[float]) -> list[int]:
    """Slot of each newcomer, in order (``len(slot_labels) + k`` for an appended one): a newcomer always
    enters; a full memory gives up a random slot (``draws`` in [0, 1)) of its largest class, the newcomer
    counted (ties: the lowest label). ``slot_labels`` is updated in place."""
    counts: dict[int, int] = {}
    for y in slot_labels:
        counts[y] = counts.get(y, 0) + 1
    out = []
    for y, r in zip(new_labels, draws):
        if len(slot_labels) < size:
            out.append(len(slot_labels))
            slot_labels.append(y)
            counts[y] = counts.get(y, 0) + 1
            continue
        freq = dict(counts)
        freq[y] = freq.get(y, 0) + 1
        top = max(freq.values())
        victim_cls = min(c for c, n in freq.items() if n == top)
        slots = [i for i, c in enumerate(slot_labels) if c == victim_cls]
        slot = slots[int(r * len(slots))]
        counts[victim_cls] -= 1
        counts[y] = counts.get(y, 0) + 1
        slot_labels[slot] = y
        out.append(slot)
    return out


@register_manager("greedy_balanced")
class BalancedMemory(MemoryManager):
    """GDumb's rule: each newcomer enters; a full memory evicts a random sample of its largest class."""

    def update(self, stream, task_id, num_class, scorer=None, featurizer=None):
        if self.size <= 0 or len(stream) == 0:
            return
        draws = torch.rand(len(stream), dtype=torch.float64).tolist()  # the CPU generator: the same on any device
        slot_labels = self.labels[self.indices].tolist()
        slots = balanced_insert(slot_labels, self.labels[stream].tolist(), self.size, draws)
        mem = torch.cat([self.indices, torch.empty(len(slot_labels) - len(self.indices), dtype=torch.long,
                                                   device=self.indices.device)])
        # a slot taken twice goes to the later newcomer (sequential semantics)
        owner = torch.full((len(mem),), -1, dtype=torch.long, device=mem.device)
        owner.scatter_reduce_(0, torch.tensor(slots, device=mem.device), torch.arange(len(stream), device=mem.device),
                              reduce="amax")
        won = owner >= 0
        mem[won] = stream[owner[won]]
        self.indices = mem
        self.seen += len(stream)

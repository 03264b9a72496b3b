"""GDumb's class-balanced rule, sample by sample (the CLIB code's gdumb and rm memory)."""
from __future__ import annotations

import bisect

import torch

from methods.memory.base import MemoryManager, register_manager


def balanced_insert(slot_labels: list[int], new_labels: list[int], size: int, draws: list[float]) -> list[int]:
    """Slot of each newcomer, in order (``len(slot_labels) + k`` for an appended one): a newcomer always
    enters; a full memory gives up a random slot (``draws`` in [0, 1)) of its largest class, the newcomer
    counted (ties: the lowest label; only classes that hold a slot). ``slot_labels`` is updated in place."""
    where: dict[int, list[int]] = {}  # each class's slots, ascending
    for i, y in enumerate(slot_labels):
        where.setdefault(y, []).append(i)
    out = []
    for y, r in zip(new_labels, draws):
        mine = where.setdefault(y, [])
        if len(slot_labels) < size:
            mine.append(len(slot_labels))
            out.append(len(slot_labels))
            slot_labels.append(y)
            continue
        # the largest class that holds a slot (the CLIB code's argmax can pick the newcomer's own class with no
        # sample yet, when every class holds one at most: np.random.choice of nothing stops it there)
        top = max(len(s) + (c == y) for c, s in where.items() if s)
        victim = min(c for c, s in where.items() if s and len(s) + (c == y) == top)
        slots = where[victim]
        slot = slots.pop(int(r * len(slots)))
        bisect.insort(mine, slot)
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

"""DER++ (dark experience replay, mammoth's defaults): ER whose memory keeps the logits of its samples."""
from __future__ import annotations

import torch

from methods import register
from methods.er import ER
from methods.replay_rules import DERPP_ALPHA, DERPP_BETA, derpp_loss


@register("der++")
class DERpp(ER):
    """Each step: CE on the temporary batch + 0.2 * MSE between the logits of one uniform memory draw
    and the logits stored with it + 0.5 * CE on a second, independent draw with its labels (each draw
    --batchsize - --temp_batchsize samples; no cutmix, as mammoth). The temporary samples enter the
    reservoir with the logits of their last step; a stored row is matched on the columns the head had
    then (a sample that earned no step before entering has none and is matched on none)."""

    def __init__(self, cfg, data, device, writer=None) -> None:
        super().__init__(cfg, data, device, writer)
        size = self.memory_size()
        self.slot_logits = torch.zeros(size, data.n_classes, device=device)  # by memory slot
        self.slot_width = torch.zeros(size, dtype=torch.long, device=device)
        self.last = torch.zeros(0, data.n_classes, device=device)  # the last step's logits of the temp samples
        self.drawn = torch.zeros(0, dtype=torch.long, device=device)  # slots of the logit-matching draw
        self.n_temp = 0  # the temporary samples at the head of the step's batch (a task's last chunk may be short)

    def replay_batch(self, temp: torch.Tensor) -> torch.Tensor:
        """The temporary samples, then two independent uniform memory draws."""
        mem = self.memory.indices
        k = min(self.cfg.batchsize - len(temp), len(mem))
        self.n_temp = len(temp)
        if k <= 0:
            self.drawn = self.drawn[:0]
            return temp
        self.drawn = torch.randperm(len(mem), device=mem.device)[:k]
        return torch.cat([temp, mem[self.drawn], mem[torch.randperm(len(mem), device=mem.device)[:k]]])

    def train_step(self, x, y, idx=None, extra=None):
        n_temp, k = self.n_temp, len(self.drawn)
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.net(x)
        if k == 0:
            loss = self.criterion(logits[:n_temp], y[:n_temp])
        else:
            stored = self.slot_logits[self.drawn, :logits.shape[1]]
            loss, _ = derpp_loss(logits[:n_temp], y[:n_temp], logits[n_temp:n_temp + k], stored,
                                 logits[n_temp + k:], y[n_temp + k:], DERPP_ALPHA, DERPP_BETA,
                                 self.slot_width[self.drawn])
        loss.backward()
        self.optimizer.step()
        self.decay_lr()
        self.last = logits[:n_temp].detach()
        return loss, logits[:n_temp], y[:n_temp]

    def remember(self, temp: torch.Tensor, task_id: int) -> None:
        """The reservoir update; the slots that took a temporary sample take its last logits."""
        old = self.memory.indices
        super().remember(temp, task_id)
        new = self.memory.indices
        changed = torch.ones(len(new), dtype=torch.bool, device=new.device)
        changed[:len(old)] = new[:len(old)] != old
        slots = torch.nonzero(changed).flatten()
        pos = (new[slots, None] == temp[None, :]).to(torch.uint8).argmax(1)  # its place in temp
        w = self.last.shape[1] if len(self.last) == len(temp) else 0
        self.slot_logits[slots] = 0.0
        if w:
            self.slot_logits[slots, :w] = self.last[pos]
        self.slot_width[slots] = w
        self.last = self.last[:0]

    def extra_state(self) -> dict:
        return {"slot_logits": self.slot_logits.cpu(), "slot_width": self.slot_width.cpu()}

    def load_extra_state(self, state: dict) -> None:
        self.slot_logits = state["slot_logits"].to(self.device)
        self.slot_width = state["slot_width"].to(self.device)

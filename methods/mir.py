"""MIR (maximally interfered retrieval, the CLIB code's mir): ER whose memory samples are the most interfered."""
from __future__ import annotations

import torch
from torch import nn

from methods import register
from methods.er import ER
from methods.replay_rules import mir_scores, mir_select
from utils.data.augment import normalize

N_CANDIDATES = 50  # the CLIB scripts' mir_cands


@register("mir")
class MIR(ER):
    """Per step: a virtual SGD step (at the optimizer's current lr) on the augmented temporary batch; 50
    random memory candidates are scored on un-augmented copies by CE after the step minus CE now; the
    --batchsize - --temp_batchsize most interfered (augmented) join the temporary batch for the real step.
    The CLIB code scores in train mode, so batch norm's running statistics move (its setting's default);
    elsewhere, and with --as_intended, the scoring runs in eval mode and leaves them as they were. A step with
    a single stream sample (a task's last chunk) on mlp400, whose BatchNorm1d cannot train on one sample, takes
    the first candidates as drawn (uniform), unscored."""

    n_temp = 0  # the temporary samples at the head of the step's batch

    def replay_batch(self, temp: torch.Tensor) -> torch.Tensor:
        """The temporary samples, then up to 50 memory candidates drawn uniformly (scored in the step)."""
        mem = self.memory.indices
        self.n_temp = len(temp)  # a task's last chunk may be shorter than --temp_batchsize
        if self.cfg.batchsize - len(temp) <= 0 or not len(mem):
            return temp
        return torch.cat([temp, mem[torch.randperm(len(mem), device=mem.device)[:N_CANDIDATES]]])

    def train_step(self, x, y, idx=None, extra=None):
        n_temp = self.n_temp
        if len(x) > n_temp:
            cand = idx[n_temp:]
            plain = normalize(self.data.train.images[cand], self.data.mean, self.data.std)
            lr = self.optimizer.param_groups[0]["lr"]
            if n_temp > 1 or not any(isinstance(m, nn.BatchNorm1d) for m in self.model.modules()):
                scores = mir_scores(self.model, x[:n_temp], y[:n_temp], plain, y[n_temp:], lr,
                                    bn_drift=self.follow == "clib")
                keep = mir_select(scores, self.cfg.batchsize - n_temp) + n_temp
            else:  # one stream sample (a task's last chunk): mlp400's BatchNorm1d cannot take its virtual step
                keep = torch.arange(n_temp, min(len(x), self.cfg.batchsize), device=x.device)  # as drawn
            rows = torch.cat([torch.arange(n_temp, device=x.device), keep])
            x, y, idx = x[rows], y[rows], idx[rows]
        return super().train_step(x, y, idx, extra)

"""The Method's model, head and optimizer: build the model, grow or replace its head, wrap it for torchrun."""
from __future__ import annotations

from torch import nn

from methods.engine.online_protocol import grow_head
from methods.engine.optim import make_optimizer
from models import build_model
from utils.run import dist


class ModelHead:
    """The model parts of methods.base.Method, which sets what they read (``cfg``, ``data``, ``device``,
    ``in_channels``, ``model``, ``exposed``, ``num_learning_class``, ``exact_grey_fold``, ``_net``)."""

    def new_model(self, n_out: int) -> nn.Module:
        size = self.data.train.images.shape[-1]
        self.head = "initial"
        return build_model(self.cfg.model_name, n_out, self.in_channels, size, self.grey_fold()).to(self.device)

    def grey_fold(self) -> str | None:
        """mlp400's fold of its identical input slices on grey images (models.mlp.MLP): the kind of the
        optimizer the method trains with ("sgd", or "adam" without weight decay: ``optimizer_kind``) where the
        fold is exact for the method (``fold_exact``) or --grey_fold all forces it; None otherwise."""
        mode = getattr(self.cfg, "grey_fold", "auto")
        if self.data.train.images.shape[1] != 1 or not (mode == "all" or (mode == "auto" and self.fold_exact())):
            return None
        return self.optimizer_kind(self.cfg)

    @classmethod
    def optimizer_kind(cls, cfg) -> str | None:
        """The optimizer ``build_optimizer`` makes, as a grey fold knows it: "sgd", or None (the preset's Adam
        and RAdam have weight decay)."""
        return "sgd" if cfg.opt_name == "sgd" else None

    def fold_exact(self) -> bool:
        """Whether folding mlp400's input slices leaves this method's training exact (``exact_grey_fold``)."""
        return self.exact_grey_fold

    def replace_head(self, n_out: int) -> None:
        """The public code: a freshly initialised nn.Linear with bias."""
        self.model.fc = nn.Linear(self.model.fc.in_features, n_out).to(self.device)
        self.head = "linear"

    def build_optimizer(self) -> None:
        """A new optimizer and scheduler over the trained parameters (reset every task)."""
        self.optimizer, self.scheduler = make_optimizer(self.cfg.opt_name, self.cfg.lr, self.model,
                                                        self.cfg.sched_name)

    def expand_head(self, n_out: int) -> None:
        """Outside the CVPR'21 code's settings: the head grows keeping the old classes' rows (fresh biases);
        the initial head (linear + batch norm) becomes a plain linear one before anything trains it."""
        fc = self.model.fc
        if not isinstance(fc, nn.Linear):
            self.replace_head(n_out)
            return
        self.model.fc = grow_head(fc, n_out)
        self.head = "linear"

    @property
    def net(self) -> nn.Module:
        """The model as a training step's first forward pass calls it: under torchrun, wrapped for
        data-parallel training (batch norm over all ranks, gradients averaged in the backward pass),
        rebuilt whenever the model, its head or the trained parameters change; alone, the model.
        Further forward passes of the same step call ``self.model`` (their gradients are averaged too)."""
        if not dist.info().active:
            return self.model
        key = (id(self.model), id(getattr(self.model, "fc", None)),
               tuple(p.requires_grad for p in self.model.parameters()))
        if self._net is None or self._net[0] != key:
            dist.sync_batchnorm(self.model, self.device.type)
            self._net = (key, dist.data_parallel(self.model, self.device))
        return self._net[1]

    @property
    def n_out(self) -> int:
        return self.model.fc.out_features

    def head_size(self) -> int:
        """Outputs the head needs: every class exposed so far, and at least --n_init_cls."""
        return max(self.num_learning_class, max(self.exposed, default=-1) + 1)

"""What the memory managers ask of a Method's model: normalised features (herding, nearest-mean), vote uncertainty."""
from __future__ import annotations

import torch

from methods.memory import Featurizer, model_featurizer
from methods.memory.uncertainty import vote_uncertainty
from utils.run import dist


class MemoryScoring:
    """The scorers of methods.base.Method (it sets ``model``, ``data``, ``cfg``, ``n_out``, ``predict_logits`` and
    ``count``)."""

    def featurizer(self) -> Featurizer:
        """Normalised model features of training-set indices (herding, nearest-mean); under torchrun
        each rank computes its share and every rank gets all of them."""
        local = model_featurizer(self.model, self.data.train.images, self.data.mean, self.data.std)
        if not dist.info().active:
            return local
        return lambda idx: dist.gather_shards(local(dist.shard(idx)), len(idx))

    @torch.no_grad()
    def uncertainty(self, cand: torch.Tensor) -> torch.Tensor:
        """Vote uncertainty of the candidates over the --uncert_metric views."""
        self.model.eval()
        # under torchrun every rank draws all the views (the random stream of one process) and predicts its share
        predict = self.shared_predict_logits if dist.info().active else self.predict_logits
        unc, k = vote_uncertainty(predict, dist.shared_decoding(self.data.train.images), cand, self.cfg.uncert_metric,
                                  self.n_out)
        self.count("uncertainty_views", len(cand) * k)
        return unc

    @torch.no_grad()
    def shared_predict_logits(self, x: torch.Tensor) -> torch.Tensor:
        """predict_logits of every row of ``x``, each rank computing its share (torchrun)."""
        return dist.gather_shards(self.predict_logits(dist.shard(x)), len(x))

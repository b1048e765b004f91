"""An outside algorithm written the way a researcher naturally writes one (issue 14): not a
dataclass, hyper-parameters as plain class attributes, hooks without the normalizer= / ref_logp=
keywords. It registers and trains: its policy_loss sees each whole mini-batch."""

import torch

import algorithms


@algorithms.register("natural_reinforce")
class NaturalReinforce(algorithms.Algorithm):
    """REINFORCE with a group-mean baseline, -A·log π token-mean over what it is given."""

    scale = 1.0

    def advantages(self, rewards, group_ids):
        _, inverse = torch.unique(group_ids, return_inverse=True)
        sums = torch.zeros(int(inverse.max()) + 1).index_add_(0, inverse, rewards.float())
        means = sums / torch.bincount(inverse)
        return self.scale * (rewards.float() - means[inverse])

    def policy_loss(self, logp, old_logp, adv, mask, group_ids):
        mask = mask.to(logp.dtype)
        loss = -(adv[:, None] * logp * mask).sum() / mask.sum().clamp(min=1)
        return loss, {"tokens": mask.sum().detach()}

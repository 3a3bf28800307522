"""The DINO self-distillation loss: cross-entropy between a centred, sharpened teacher and the
student over pairs of different crops."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from selfsup import dist


class DINOLoss(nn.Module):
    """DINO loss (Caron et al., 2021, "Emerging Properties in Self-Supervised Vision
    Transformers", Eq. 1-4, Algorithm 1).

    With teacher logits ``t_i`` of the global crops, student logits ``s_j`` of all crops and
    the centre ``c``::

        P_t(i) = softmax((t_i - c) / tau_t)        P_s(j) = softmax(s_j / tau_s)
        L = mean over pairs (i, j) with i != j of  mean_b  -sum_k P_t(i)[b, k] log P_s(j)[b, k]

    The student's first crops are the same global crops as the teacher's, in the same order,
    so ``i == j`` pairs (a crop predicting itself) are skipped. The loss is pure: the centre
    and teacher temperature come in as arguments (the method owns the centre buffer and
    updates it with :func:`update_center`).

    Args:
        student_temp: ``tau_s``. The paper uses 0.1 throughout.
    """

    def __init__(self, student_temp: float = 0.1) -> None:
        super().__init__()
        if student_temp <= 0:
            raise ValueError(f"student_temp must be positive, got {student_temp}")
        self.student_temp = student_temp

    def forward(
        self,
        student: Sequence[torch.Tensor],
        teacher: Sequence[torch.Tensor],
        center: torch.Tensor,
        teacher_temp: float,
    ) -> torch.Tensor:
        """``student``: V_s tensors (B, K) of logits, global crops first; ``teacher``: V_t
        tensors (B, K), the global crops (V_t <= V_s); ``center``: (K,) or (1, K) -> scalar."""
        if teacher_temp <= 0:
            raise ValueError(f"teacher_temp must be positive, got {teacher_temp}")
        if len(teacher) == 0 or len(student) == 0:
            raise ValueError("DINOLoss needs at least one teacher and one student crop")
        if len(teacher) > len(student):
            raise ValueError(
                f"the teacher sees the global crops, a subset of the student's crops; got "
                f"{len(teacher)} teacher and {len(student)} student crops"
            )
        if len(teacher) == 1 and len(student) == 1:
            raise ValueError("with one crop only there is no pair of different crops")
        s = torch.stack([x.float() for x in student])  # (V_s, B, K)
        t = torch.stack([x.float() for x in teacher])  # (V_t, B, K)
        if s.shape[1:] != t.shape[1:]:
            raise ValueError(
                f"student and teacher crops must be (B, K) of one shape, got "
                f"{tuple(s.shape[1:])} and {tuple(t.shape[1:])}"
            )
        log_p_s = F.log_softmax(s / self.student_temp, dim=-1)
        p_t = F.softmax((t - center.float().reshape(1, 1, -1)) / teacher_temp, dim=-1).detach()
        # Element-wise products rather than a matmul, which autocast would run in bf16.
        terms = [
            -(p_t[i] * log_p_s[j]).sum(dim=-1).mean()
            for i in range(t.shape[0])
            for j in range(s.shape[0])
            if i != j
        ]
        return torch.stack(terms).mean()


@torch.no_grad()
def update_center(center: torch.Tensor, teacher: torch.Tensor, momentum: float) -> None:
    """In place: ``center <- momentum * center + (1 - momentum) * mean(teacher)``.

    ``teacher``: (N, K) teacher logits of this step (before centring and sharpening). The
    mean is over the global batch (sums and counts added over ranks), so every rank keeps
    the same centre (DINO Eq. 4; the paper uses momentum 0.9). With no rows on any rank
    (e.g. no hidden patch for iBOT) the centre is left as it is.
    """
    t = teacher.detach().float()
    # Sum and count in one collective; a rank with N = 0 still takes part.
    stats = torch.cat([t.sum(dim=0), t.new_tensor([float(t.shape[0])])])
    stats = dist.all_reduce_sum(stats)
    count = float(stats[-1])
    if count == 0:
        return
    batch_center = stats[:-1] / count
    center.mul_(momentum).add_(batch_center.reshape(center.shape), alpha=1.0 - momentum)

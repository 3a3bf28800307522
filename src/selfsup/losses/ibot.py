"""iBOT's masked-patch self-distillation loss (masked image modelling with an online
tokenizer)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class IBOTPatchLoss(nn.Module):
    """iBOT patch loss (Zhou et al., 2022, "iBOT: Image BERT Pre-Training with Online
    Tokenizer", Eq. 2; DINOv2, Oquab et al., 2023, Sec. 4).

    The student sees an image with some patches replaced by a mask token; the teacher sees
    it intact. For patch ``n`` of image ``b`` with mask ``m[b, n]`` (1 = hidden)::

        P_t = softmax((t[b, n] - c) / tau_t)        log P_s = log_softmax(s[b, n] / tau_s)
        l_b = sum_n m[b, n] * (-sum_k P_t[k] log P_s[k]) / max(1, sum_n m[b, n])
        L = mean_b l_b

    Only hidden patches count; an image without hidden patches adds 0 to the mean (as in the
    reference code, where about half the images are unmasked).

    ``student`` and ``teacher`` are either all patch logits (B, N, K), of which only the
    masked ones are read, or only the masked ones (M, K) in the order of ``x[mask]`` (the
    cheap form: the head runs on the M hidden patches only). ``mask``: (B, N) bool;
    ``center``: (K,) or (1, K).

    Args:
        student_temp: ``tau_s``, 0.1 in iBOT and DINOv2.
    """

    def __init__(self, student_temp: float = 0.1) -> None:
        super().__init__()
        if student_temp <= 0:
            raise ValueError(f"student_temp must be positive, got {student_temp}")
        self.student_temp = student_temp

    def forward(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        mask: torch.Tensor,
        center: torch.Tensor,
        teacher_temp: float,
    ) -> torch.Tensor:
        if teacher_temp <= 0:
            raise ValueError(f"teacher_temp must be positive, got {teacher_temp}")
        if mask.ndim != 2:
            raise ValueError(f"mask must be (B, N), got shape {tuple(mask.shape)}")
        mask = mask.bool()
        if student.shape != teacher.shape:
            raise ValueError(
                f"student and teacher patch logits differ in shape: {tuple(student.shape)} "
                f"and {tuple(teacher.shape)}"
            )
        if student.ndim == 3:
            if student.shape[:2] != mask.shape:
                raise ValueError(
                    f"patch logits {tuple(student.shape)} do not match mask {tuple(mask.shape)}"
                )
            student, teacher = student[mask], teacher[mask]
        elif student.ndim != 2 or student.shape[0] != int(mask.sum()):
            raise ValueError(
                f"expected (B, N, K) logits or (M, K) logits of the {int(mask.sum())} masked "
                f"patches, got {tuple(student.shape)}"
            )
        b = mask.shape[0]
        if student.shape[0] == 0:
            return student.float().sum() * 0.0  # no hidden patch: nothing to predict
        log_p_s = F.log_softmax(student.float() / self.student_temp, dim=-1)
        p_t = F.softmax((teacher.float() - center.float().reshape(1, -1)) / teacher_temp, dim=-1)
        ce = -(p_t.detach() * log_p_s).sum(dim=-1)  # (M,)
        # Each masked patch weighs 1 / (hidden patches of its image).
        per_image = mask.sum(dim=1).clamp(min=1).float()  # (B,)
        weights = (1.0 / per_image).unsqueeze(1).expand_as(mask)[mask]  # (M,)
        return (ce * weights).sum() / b

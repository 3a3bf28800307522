"""How long a run trains and how far along it is: pure functions of the config and state."""

from __future__ import annotations

import torch

from selfsup.config import ConfigError, TrainConfig, parse_duration


def augment_on_device(choice: str, device: torch.device, specs: object) -> bool:
    """Resolve data.augment: batched augmentation needs the method's views as specs."""
    if choice == "cpu":
        return False
    if specs is None:
        if choice == "device":
            raise ConfigError(
                "data.augment=device: this method's augmentation is not built from view "
                "specs (selfsup.transforms.ViewSpec), so it can only run per image; use "
                "data.augment=cpu."
            )
        return False
    return choice == "device" or device.type == "cuda"


def budget(t: TrainConfig, steps_per_epoch: int) -> tuple[int | None, float | None]:
    """(total optimiser steps or None, seconds or None): whichever of train.epochs,
    train.steps and train.max_time ends first; 100 epochs when none is set."""
    totals = []
    epochs = t.epochs
    if epochs is None and t.steps is None and t.max_time is None:
        epochs = 100
    if epochs is not None:
        totals.append(epochs * steps_per_epoch)
    if t.steps is not None:
        totals.append(t.steps)
    max_time = parse_duration(t.max_time) if t.max_time is not None else None
    return (min(totals) if totals else None), max_time


def fraction_done(
    step: int, elapsed: float, total_steps: int | None, max_time: float | None
) -> float:
    """Progress through the budget in [0, 1]: schedules are functions of it."""
    p = 0.0
    if total_steps:
        p = max(p, step / total_steps)
    if max_time:
        p = max(p, elapsed / max_time)
    return min(p, 1.0)

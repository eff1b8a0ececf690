"""Training: SVI with regulariser terms, adversaries, validation and early stopping."""

from fcrkit.train.trainer import History, Trainer, TrainingPlan, resolve_device, resolve_elbo, train

__all__ = ["History", "Trainer", "TrainingPlan", "resolve_device", "resolve_elbo", "train"]

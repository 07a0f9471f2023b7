"""Model and dataset cards, Hub publishing (``txfm push``) and the end-to-end demo (``make demo``)."""

from .cards import build_model_card, write_model_card
from .push import PushError, push

__all__ = ["build_model_card", "write_model_card", "push", "PushError"]

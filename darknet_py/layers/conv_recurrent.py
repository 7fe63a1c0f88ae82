"""Recurrent sections on convolutions: [crnn], [conv_lstm], and [history]."""
from __future__ import annotations

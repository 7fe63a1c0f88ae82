"""Recurrent sections on fully connected layers: [rnn], [gru], [lstm]."""
from __future__ import annotations

"""Fixtures shared by every test directory."""

from __future__ import annotations

import pytest
import torch

from tiny_models import VOCAB


@pytest.fixture
def ids():
    torch.manual_seed(123)
    return torch.randint(3, VOCAB, (3, 9))

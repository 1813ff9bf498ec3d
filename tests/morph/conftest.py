"""Fixtures of the morph tests."""

import pytest
from morph_helpers import make_brain


@pytest.fixture
def brain():
    return make_brain()

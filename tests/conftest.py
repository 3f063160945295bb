import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FIXTURES = ROOT / "tests" / "fixtures"  # upstream YOLOv5 v6.2 reference files, see fixtures/README.md


@pytest.fixture(scope="session", autouse=True)
def _threads():
    import torch
    torch.set_num_threads(int(os.environ.get("TEST_THREADS", "1")))


@pytest.fixture
def refdata() -> Path:
    """The folder of upstream-written reference files kept in the repository (never skipped)."""
    assert FIXTURES.is_dir(), f"{FIXTURES} is missing: the upstream reference files belong to the repository"
    return FIXTURES

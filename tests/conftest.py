import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
REFDATA = ROOT.parent / "shared" / "refdata"


@pytest.fixture(scope="session", autouse=True)
def _threads():
    import torch
    torch.set_num_threads(int(os.environ.get("TEST_THREADS", "1")))


@pytest.fixture
def refdata() -> Path:
    if not REFDATA.is_dir():
        pytest.skip("shared/refdata not available")
    return REFDATA

import pytest
import torch

torch.set_num_threads(max(1, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles from a clean dynamo cache: a model class compiled by an earlier test at another size would
    otherwise be re-traced with automatic dynamic shapes, which Hiera's token unroll makes very slow to simplify."""
    torch._dynamo.reset()
    yield

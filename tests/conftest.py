"""Fixtures shared by the test modules."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _spectrum_cache(tmp_path_factory):
    """Automatic VAE spectrum fits cache into a folder of the test session, never the user's."""
    import os

    old = os.environ.get("SPECDIFF_CACHE_DIR")
    os.environ["SPECDIFF_CACHE_DIR"] = str(tmp_path_factory.mktemp("spectrum-cache"))
    yield
    if old is None:
        os.environ.pop("SPECDIFF_CACHE_DIR", None)
    else:
        os.environ["SPECDIFF_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests with one torch thread (tiny models on a shared 2-core machine
    are far faster single-threaded), restoring the setting afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_model(request, tmp_path_factory):
    """Path of a tiny UNet checkpoint (seeded weights, perturbed off the init) for the bench
    tests. Its metadata records the data spectrum ``A = 3, beta = 2.3`` at the side the test
    module names in ``TINY_SPECTRUM_SIDE`` (default 32); other sides scale ``A`` from it."""
    from specdiff.models import UNet, UNetConfig, save_model

    side = int(getattr(request.module, "TINY_SPECTRUM_SIDE", 32))
    tiny = UNetConfig(base=8, mults=(1, 2), time_dim=16)
    torch.manual_seed(0)
    net = UNet(tiny)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("m") / "tiny.safetensors"
    save_model(path, net.state_dict(), tiny,
               meta={"data": "skimage", "spectrum": {str(side): [3.0, 2.3]}})
    return str(path)

"""Shared fixtures: a private data cache for the whole session and a tiny embedded data set."""
import pytest

from pnca_utils.data.base import TensorImageDataset
from pnca_utils.data.embedded import EmbeddedSpec, load_embedded

TINY_SPEC = EmbeddedSpec(num_classes=16, images_per_class=8, source_images=50)


@pytest.fixture(scope="session", autouse=True)
def data_dir(tmp_path_factory):
    """Point PNCA_DATA_DIR at a session folder, so no test writes into the project's data/."""
    path = tmp_path_factory.mktemp("pnca_data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PNCA_DATA_DIR", str(path))
        yield path


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """The embedded set at TINY_SPEC, 32×32: 8 train and 8 test classes of 8 images each."""
    data = load_embedded(image_size=32, spec=TINY_SPEC, cache_dir=tmp_path_factory.mktemp("tiny"))
    assert isinstance(data.train, TensorImageDataset) and isinstance(data.test, TensorImageDataset)
    return data

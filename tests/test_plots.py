"""Plot helpers: layout, titles and input checks (no pixels compared)."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from pnca_utils.plots import class_gallery, scatter_classes, show_gallery  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_show_gallery_grid_and_titles():
    images = np.zeros((10, 8, 8), dtype=np.uint8)
    fig = show_gallery(images, [f"t{i}" for i in range(10)], ncols=4, title="top")
    assert len(fig.axes) == 12  # 3 rows of 4, the last two empty
    assert [ax.get_title() for ax in fig.axes[:10]] == [f"t{i}" for i in range(10)]
    assert not fig.axes[11].images and fig._suptitle.get_text() == "top"
    with pytest.raises(ValueError, match="titles"):
        show_gallery(images, ["only one"])


def test_class_gallery_rows_are_classes():
    labels = np.repeat([0, 1, 2], 5)
    images = (labels[:, None, None] * 100 + np.arange(15)[:, None, None] * np.ones((1, 4, 4))).astype(np.uint8)
    fig = class_gallery(images, labels, [2, 0], per_class=3, class_names=["zero", "one", "two"])
    axes = np.array(fig.axes).reshape(2, 3)
    assert [axes[r, 0].get_ylabel() for r in range(2)] == ["two", "zero"]
    assert axes[0, 0].images[0].get_array()[0, 0] == images[10, 0, 0]  # first image of class 2
    assert axes[1, 2].images[0].get_array()[0, 0] == images[2, 0, 0]  # third image of class 0
    with pytest.raises(ValueError, match="fewer than"):
        class_gallery(images, labels, [0], per_class=6)


def test_scatter_classes_labels_points():
    points = np.array([[0, 0], [1, 0], [0, 1]])
    ax = scatter_classes(points, np.array([0, 0, 1]), ["p", "q", "r"], ["A", "B"], title="t")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["A", "B"]
    assert [t.get_text() for t in ax.texts] == ["p", "q", "r"]
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title() == "t"
    with pytest.raises(ValueError, match="shape"):
        scatter_classes(np.zeros((3, 3)), np.zeros(3))

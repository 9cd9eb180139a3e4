"""Plot helpers: layout, titles and input checks (no pixels compared)."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from pnca_utils.plots import (  # noqa: E402
    class_gallery, curves, embedding_scatter, scatter_classes, show_gallery, training_curves,
)


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


def test_embedding_scatter_colours_follow_the_classes():
    points = np.arange(12, dtype=float).reshape(6, 2)
    ax1 = embedding_scatter(points, np.array([3, 3, 5, 5, 7, 7]), title="a", legend=True)
    ax2 = embedding_scatter(points[2:], np.array([5, 5, 7, 7]), proxies=np.zeros((1, 2)), proxy_labels=np.array([7]),
                            classes=[3, 5, 7])
    colour = {c.get_label(): tuple(c.get_facecolor()[0]) for c in ax1.collections}
    assert [t.get_text() for t in ax1.get_legend().get_texts()] == ["class 3", "class 5", "class 7"]
    assert tuple(ax2.collections[0].get_facecolor()[0]) == colour["class 5"]
    assert tuple(ax2.collections[-1].get_facecolor()[0]) == colour["class 7"]  # the proxy star of class 7
    assert ax1.get_title() == "a" and len(ax2.collections) == 3
    with pytest.raises(ValueError, match="shape"):
        embedding_scatter(np.zeros((3, 3)), np.zeros(3))
    assert len({c.get_facecolor()[0].tobytes() for c in ax1.collections}) == 3  # distinct colours
    with pytest.raises(ValueError, match="together"):
        embedding_scatter(points, np.zeros(6), proxies=np.zeros((1, 2)))
    with pytest.raises(ValueError, match="not in classes"):
        embedding_scatter(points, np.array([3, 3, 5, 5, 7, 7]), classes=[3, 5])


def _history(losses, r1):
    return {"steps": [{"loss": v, "grad": 2 * v} for v in losses],
            "epochs": [{"epoch": e + 1, "loss": 0.0, "R@1": r} for e, r in enumerate(r1)]}


def test_training_curves_panels_and_smoothing():
    histories = {"a": _history([4.0, 2.0, 0.0, 2.0], [10.0, 20.0]), "b": _history([1.0] * 4, [5.0, 6.0])}
    fig = training_curves(histories, step_keys=("loss", "grad"), smooth=2, baseline=3.0, title="t",
                          labels={"grad": "gradient norm"})
    loss_ax, grad_ax, r1_ax = fig.axes
    assert loss_ax.get_ylabel() == "loss" and grad_ax.get_ylabel() == "gradient norm"
    smoothed = loss_ax.lines[1].get_ydata()  # run a: raw line, then its moving average
    np.testing.assert_allclose(smoothed, [4.0, 3.0, 1.0, 1.0])
    np.testing.assert_allclose(grad_ax.lines[0].get_ydata(), [8.0, 4.0, 0.0, 4.0])
    assert list(r1_ax.lines[0].get_ydata()) == [10.0, 20.0] and list(r1_ax.lines[1].get_xdata()) == [1, 2]
    assert r1_ax.lines[-1].get_ydata()[0] == 3.0  # the baseline
    assert list(r1_ax.get_xticks()) == [1, 2]  # whole epochs only
    assert "R@1" in r1_ax.get_ylabel() and fig._suptitle.get_text() == "t"
    with pytest.raises(ValueError, match="empty"):
        training_curves({})


def test_curves_checks_shapes():
    x = np.linspace(0, 1, 5)
    ax = curves(x, {"up": x, "down": 1 - x}, "d", "loss", logy=False, zero_line=True, title="t")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["up", "down"]
    assert ax.get_xlabel() == "d" and ax.get_title() == "t" and len(ax.lines) == 3
    assert curves(x, {"y": x + 1}, "d", "y", logy=True).get_yscale() == "log"
    with pytest.raises(ValueError, match="shape"):
        curves(x, {"bad": x[:3]}, "d", "y")

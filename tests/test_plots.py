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


def test_hardening_picture_draws_every_point_and_checks_shapes():
    from pnca_utils.plots import hardening_picture

    hardened = np.array([[0.6, 0.8], [1.5, 2.0]])
    ax = hardening_picture([0, 0], [1, 0], [3, 4], hardened, labels=["a", "b"], title="t")
    assert [t.get_text() for t in ax.texts] == ["a", "b"] and ax.get_title() == "t"
    assert len(ax.patches) == 1 and ax.patches[0].get_radius() == pytest.approx(1.0)  # the circle of radius d+
    assert len(ax.get_legend().get_texts()) == 4
    np.testing.assert_allclose(ax.collections[-1].get_offsets(), hardened)
    with pytest.raises(ValueError, match="2-D points"):
        hardening_picture([0, 0, 0], [1, 0, 0], [3, 4, 0], hardened)
    with pytest.raises(ValueError, match="labels"):
        hardening_picture([0, 0], [1, 0], [3, 4], hardened, labels=["only one"])


def test_step_curves_leave_gaps_for_missing_values():
    from pnca_utils.plots import step_curves

    history = {"steps": [{"j": None, "w": 1.0}, {"j": 2.0, "w": 3.0}, {"j": 4.0, "w": 5.0}]}
    fig = step_curves({"a": history, "b": {"steps": [{"w": 1.0}]}}, ["j", "w"], labels={"j": "J_avg"},
                      smooth=2, logy=["w"], title="t")
    j_ax, w_ax = fig.axes
    assert j_ax.get_ylabel() == "J_avg" and w_ax.get_ylabel() == "w" and w_ax.get_yscale() == "log"
    trend = j_ax.lines[1].get_ydata()
    assert np.isnan(trend[0]) and list(trend[1:]) == [2.0, 3.0]
    assert len(j_ax.lines) == 2 and len(w_ax.lines) == 4  # run b has no 'j'
    assert fig._suptitle.get_text() == "t"
    unsmoothed = step_curves({"a": history}, ["j"], raw=["j"]).axes[0]
    assert len(unsmoothed.lines) == 1 and unsmoothed.get_xlabel() == "training step"
    np.testing.assert_array_equal(unsmoothed.lines[0].get_ydata(), [np.nan, 2.0, 4.0])
    with pytest.raises(ValueError, match="empty"):
        step_curves({}, ["j"])


def test_sweep_marks_values_references_and_checks_shapes():
    from pnca_utils.plots import sweep

    ax = sweep([1, 1 / 3, 1 / 9], {"R@1": [10.0, 20.0, 30.0], "MAP@R": [1.0, 2.0, 3.0]}, "T", "percent",
               ticklabels=["1", "1/3", "1/9"], reference={"untrained": 5.0}, highlight=1 / 9, title="t")
    assert ax.get_xscale() == "log" and ax.get_title() == "t"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "1/3", "1/9"]
    assert list(ax.lines[0].get_ydata()) == [10.0, 20.0, 30.0] and ax.lines[2].get_ydata()[0] == 5.0
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["R@1", "MAP@R", "untrained"]
    assert len(ax.patches) == 1  # the highlighted value
    with pytest.raises(ValueError, match="tick labels"):
        sweep([1, 2], {"a": [1, 2]}, "x", "y", ticklabels=["1"])
    with pytest.raises(ValueError, match="values"):
        sweep([1, 2], {"a": [1, 2, 3]}, "x", "y")


def test_activation_overlays_rows_boxes_and_checks():
    from pnca_utils.plots import activation_overlays

    images = np.zeros((3, 16, 16), np.uint8)
    maps = {"winners": np.ones((3, 4, 4)), "sum": np.zeros((3, 4, 4))}
    boxes = np.array([[2, 3, 8, 12]] * 3)
    fig = activation_overlays(images, maps, boxes, titles=["a", "b", "c"], title="t")
    axes = np.array(fig.axes).reshape(3, 3)
    assert [ax.get_ylabel() for ax in axes[:, 0]] == ["image", "winners", "sum"]
    assert [ax.get_title() for ax in axes[0]] == ["a", "b", "c"]
    assert len(axes[0, 0].images) == 1 and len(axes[1, 0].images) == 2  # the image, then the map over it
    rect = axes[2, 1].patches[0]
    assert (rect.get_x(), rect.get_y(), rect.get_width(), rect.get_height()) == (3, 2, 9, 6)
    assert fig._suptitle.get_text() == "t"
    with pytest.raises(ValueError, match="maps"):
        activation_overlays(images, {"bad": np.ones((2, 4, 4))})
    with pytest.raises(ValueError, match="boxes"):
        activation_overlays(images, maps, boxes[:2])
    with pytest.raises(ValueError, match="titles"):
        activation_overlays(images, maps, titles=["a"])


def test_step_overlay_draws_every_key_on_one_axes():
    from pnca_utils.plots import step_overlay

    history = _history([1.0, 2.0, 3.0], [5.0])  # steps have "loss" and "grad"
    ax = step_overlay(history, ["loss", "grad"], labels={"grad": "gradient"}, smooth=2, title="t")
    assert len(ax.lines) == 4 and ax.get_yscale() == "log" and ax.get_title() == "t"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["loss", "gradient"]
    np.testing.assert_allclose(ax.lines[1].get_ydata(), [1.0, 1.5, 2.5])  # moving average of 2
    with pytest.raises(ValueError, match="not in the history"):
        step_overlay(history, ["nope"])
    with pytest.raises(ValueError, match="no steps"):
        step_overlay({"steps": []}, ["loss"])


def test_histograms_share_bins():
    from pnca_utils.plots import histograms

    ax = histograms({"a": [0.0, 1.0, 1.0], "b": [2.0, 3.0]}, "value", bins=6, density=False)
    assert len(ax.patches) == 12 and ax.get_ylabel() == "count"
    assert ax.patches[0].get_x() == pytest.approx(ax.patches[6].get_x())  # the same edges for both
    assert sum(p.get_height() for p in ax.patches[:6]) == 3
    assert histograms({"flat": [1.0, 1.0]}, "v").patches  # one value only still draws
    with pytest.raises(ValueError, match="empty"):
        histograms({}, "v")


def test_image_rows_label_resolution():
    from pnca_utils.plots import image_rows

    fig = image_rows({"48 px": np.zeros((3, 48, 48), np.uint8), "32 px": np.zeros((3, 32, 32), np.uint8)}, title="t")
    axes = np.array(fig.axes).reshape(2, 3)
    assert axes[0, 0].get_ylabel() == "48 px\n48×48" and axes[1, 0].get_ylabel() == "32 px\n32×32"
    assert axes[1, 2].images[0].get_array().shape == (32, 32) and fig._suptitle.get_text() == "t"
    with pytest.raises(ValueError, match="same number"):
        image_rows({"a": np.zeros((2, 8, 8)), "b": np.zeros((3, 8, 8))})


def test_delta_bars_colours_and_labels():
    from pnca_utils.plots import delta_bars

    ax = delta_bars({"worse": -3.0, "better": 1.5})
    assert [t.get_text() for t in ax.get_yticklabels()] == ["worse", "better"]
    assert [p.get_width() for p in ax.patches] == [-3.0, 1.5]
    assert [t.get_text() for t in ax.texts] == ["-3.0", "+1.5"]
    assert ax.patches[0].get_facecolor()[0] > ax.patches[0].get_facecolor()[1]  # red for a drop
    with pytest.raises(ValueError, match="empty"):
        delta_bars({})


def test_paired_seeds_draws_a_line_per_seed_and_a_colour_per_pair():
    import pandas as pd
    from pnca_utils.plots import paired_seeds

    by_seed = pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0], "c": [5.0, 6.0], "d": [7.0, 8.0]})
    ax = paired_seeds(by_seed, {"first": ("a", "b"), "second": ("c", "d")}, ["left", "right"])
    drawn = [line for line in ax.lines if len(line.get_ydata())]
    assert [list(line.get_ydata()) for line in drawn] == [[1, 3], [2, 4], [5, 7], [6, 8]]
    assert drawn[0].get_color() == drawn[1].get_color() != drawn[2].get_color()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["left", "right"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["first", "second"]


def test_tsne_panels_title_each_model_with_the_recall_of_its_embeddings(tiny_data):
    from pnca_utils import analysis, metrics
    from pnca_utils.config import make_config
    from pnca_utils.plots import tsne_panels
    from pnca_utils.training import build

    models = {f"net {k}": build(make_config("proxynca", "ci", weights=None, embedding_dim=8, seed=k), 1,
                                tiny_data.num_train_classes)[0] for k in (0, 1)}
    chosen = [1, 4, 6]
    fig, r1 = tsne_panels(models, tiny_data.test, chosen, per_class=4)
    assert len(fig.axes) == 2 and list(r1) == ["net 0", "net 1"]
    for ax, (name, model) in zip(fig.axes, models.items()):
        emb, labels = analysis.embed_classes(model, tiny_data.test, chosen, per_class=4)
        assert r1[name] == 100 * metrics.recall_at_k(emb, labels, [1])[1]
        assert ax.get_title() == f"{name}: R@1 {r1[name]:.1f} among these 3 classes"
        assert sum(len(c.get_offsets()) for c in ax.collections) == 12  # 3 classes x 4 images
    assert fig._suptitle.get_text().startswith("t-SNE of 3 test classes (4 images each)")

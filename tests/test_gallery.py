"""Retrieval galleries: neighbours against a loop-by-loop reference, and the colours of the frames."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.colors as mcolors  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from pnca_utils.gallery import nearest_neighbours, plot_retrieval  # noqa: E402


def _reference(points, k):
    out = []
    for i, p in enumerate(points):
        dists = [(sum((a - b) ** 2 for a, b in zip(p, q)), j) for j, q in enumerate(points) if j != i]
        out.append([j for _, j in sorted(dists)[:k]])  # equal distances: the lower index first
    return np.array(out)


def test_neighbours_match_a_loop_with_ties_and_no_self_match():
    points = [[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [3.0, 3.0]]  # 0 and 4 coincide
    got = nearest_neighbours(torch.tensor(points), 3)
    assert np.array_equal(got, _reference(points, 3))
    assert got[0, 0] == 4 and got[4, 0] == 0  # a duplicate is found, the query itself never
    assert list(got[5]) == [1, 3, 0]  # 1 and 3 tie at distance 13: lower index first
    rng = np.random.default_rng(0)
    cloud = rng.integers(0, 3, size=(30, 2)).astype(float).tolist()  # many exact ties
    assert np.array_equal(nearest_neighbours(torch.tensor(cloud), 5), _reference(cloud, 5))


def test_k_out_of_range_is_an_error():
    with pytest.raises(ValueError, match="k=4"):
        nearest_neighbours(torch.zeros(4, 2), 4)


def test_frames_mark_correct_and_wrong_neighbours():
    images = np.zeros((4, 1, 5, 5), dtype=np.uint8)
    labels = [0, 0, 1, 0]
    neighbours = np.array([[1, 2], [0, 3], [0, 1], [0, 1]])
    fig = plot_retrieval(images, labels, [0, 2], neighbours)
    axes = np.array(fig.axes).reshape(2, 3)
    colour = lambda ax: mcolors.to_hex(ax.spines["left"].get_edgecolor())  # noqa: E731
    assert [colour(ax) for ax in axes[0]] == ["#000000", mcolors.to_hex("tab:green"), mcolors.to_hex("tab:red")]
    assert [colour(ax) for ax in axes[1]] == ["#000000", mcolors.to_hex("tab:red"), mcolors.to_hex("tab:red")]
    assert axes[0, 0].get_title() == "query"

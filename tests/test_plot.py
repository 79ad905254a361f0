"""Figures from histories, checked through their matplotlib objects."""

from __future__ import annotations


import numpy as np
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.image import AxesImage
from PIL import Image

from conftest import synthetic_history
from jaxmlp import plot

SMALL = dict(steps=60, eval_every=10)


def misclassified(n: int, shape=(8, 8), dtype=np.uint8) -> dict:
    rng = np.random.default_rng(n)
    return {"image": (rng.random((n, *shape)) * (255 if dtype == np.uint8 else 1)).astype(dtype),
            "predicted": rng.integers(0, 3, n), "label": rng.integers(0, 3, n)}


def bare(h: dict) -> dict:
    """``h`` without parameter percentiles: a smaller dashboard, for tests of its other parts."""
    return {k: v for k, v in h.items() if not k.endswith("percentiles")}


def lines(ax, gid: str) -> list:
    return [line for line in ax.lines if line.get_gid() == gid]


def curve_axes(fig) -> list:
    return [ax for ax in fig.axes if lines(ax, "test")]


def image_axes(fig) -> list:
    return [ax for ax in fig.axes if ax.images]


def percentile_axes(fig) -> list:
    return [ax for ax in fig.axes if "weights" in ax.get_title() or "biases" in ax.get_title()]


def test_plot_history_writes_three_pngs_at_150_dpi(tmp_path):
    paths = plot.plot_history(synthetic_history(**SMALL), tmp_path / "out", misclassified=misclassified(3))
    assert [p.name for p in paths] == ["accuracy.png", "cross_entropy.png", "dashboard.png"]
    for path in paths:
        with Image.open(path) as im:
            assert im.format == "PNG" and im.info["dpi"][0] >= 149.9
            assert im.size[0] >= 12 * 150  # the figures' inches at that dpi
    assert len({p.read_bytes() for p in paths}) == 3


@pytest.mark.parametrize("figure", [plot.accuracy_figure, plot.cross_entropy_figure])
def test_curves_full_and_zoom_panels_train_thin_test_thick(figure):
    h = synthetic_history(**SMALL)
    fig = figure(h)
    full, zoom = curve_axes(fig)
    for ax in (full, zoom):
        train, test = lines(ax, "train"), lines(ax, "test")
        assert len(train) == len(test) == 1
        assert len(train[0].get_xdata()) == 60 and len(test[0].get_xdata()) == 7  # per step, per evaluation
        assert max(l.get_linewidth() for l in train) < 1 < 2 <= min(l.get_linewidth() for l in test)
        metric = "accuracy" if figure is plot.accuracy_figure else "loss"
        np.testing.assert_allclose(test[0].get_ydata(), h["test_" + metric], rtol=1e-6)
    if figure is plot.accuracy_figure:
        assert full.get_ylim()[0] <= 0 and full.get_ylim()[1] >= 1
        assert zoom.get_ylim()[0] == pytest.approx(0.85)
    else:  # zoomed to twice the median test loss of the second half of the run
        late = h["test_loss"][h["test_step"] >= 30]
        assert zoom.get_ylim() == pytest.approx((0, 2 * np.median(late)))
        assert full.get_ylim()[1] >= h["train_loss"].max()
        assert "loss" in full.get_ylabel()


def test_an_ensemble_draws_a_line_per_member_named_by_members():
    h = synthetic_history(**SMALL, members=3)
    for fig in (plot.accuracy_figure(h, members=["a", "b", "c"]),
                plot.dashboard_figure(bare(h), members=["a", "b", "c"])):
        ax = curve_axes(fig)[0]
        test = lines(ax, "test")
        assert [l.get_label().split(":")[0] for l in test] == ["a", "b", "c"]
        for k, line in enumerate(test):
            np.testing.assert_allclose(line.get_ydata(), h["test_accuracy"][k], rtol=1e-6)
    # Many members: their mean and a min-max band.
    big = synthetic_history(**SMALL, members=plot.MAX_MEMBER_LINES + 2)
    ax = curve_axes(plot.accuracy_figure(big))[0]
    (test,) = lines(ax, "test")
    np.testing.assert_allclose(test.get_ydata(), big["test_accuracy"].mean(axis=0), rtol=1e-5)
    assert any(isinstance(c, PolyCollection) for c in ax.collections)


def test_comparison_overlays_runs_with_their_labels():
    runs = [synthetic_history(**SMALL, seed=0), synthetic_history(**SMALL, members=2, seed=1)]
    for figure in (plot.accuracy_figure, plot.cross_entropy_figure):
        fig = figure(runs, ["first", "second"])
        for ax in curve_axes(fig):
            assert len(lines(ax, "train")) == len(lines(ax, "test")) == 2
            labels = [t.get_text() for t in curve_axes(fig)[0].get_legend().get_texts()]
            assert labels[0].startswith("first:") and labels[1].startswith("second:")
            assert "mean of 2" in labels[1] and "mean of" not in labels[0]
    with pytest.raises(ValueError):
        plot.accuracy_figure(runs, ["only one"])


def test_a_diverged_run_is_marked_at_its_first_nonfinite_step():
    h = synthetic_history(**SMALL)
    h["train_loss"][40:] = np.inf
    h["train_accuracy"][40:] = np.nan
    fig = plot.cross_entropy_figure(h)
    for ax in curve_axes(fig):
        (mark,) = lines(ax, "diverged")
        assert mark.get_xdata()[0] == 41
        assert np.isfinite(ax.get_ylim()).all()  # inf is a gap, not an infinite axis
    e = synthetic_history(**SMALL, members=3)
    e["train_loss"][1, 20:] = np.inf  # member 1 only
    for ax in curve_axes(plot.accuracy_figure(e)):
        assert [m.get_xdata()[0] for m in lines(ax, "diverged")] == [21]
        assert lines(ax, "diverged")[0].get_color() == "red"


@pytest.mark.parametrize("rgb", [True, False])
def test_dashboard_shows_misclassified_images_in_colour_or_grey_with_class_names(rgb):
    wrong = misclassified(30, (8, 8, 3) if rgb else (8, 8), np.uint8 if rgb else np.float32)
    names = ["cat", "dog", "owl"]
    fig = plot.dashboard_figure(bare(synthetic_history(**SMALL)), wrong, class_names=names)
    (ax,) = image_axes(fig)  # one mosaic: the first MAX_IMAGES of 30, four to a row
    image = ax.images[0]
    assert isinstance(image, AxesImage)
    mosaic = np.asarray(image.get_array())
    gap = max(2, round(0.45 * 8))
    assert mosaic.shape[:2] == (plot.MAX_IMAGES // 4 * (8 + gap), 4 * 9)
    if rgb:
        assert mosaic.shape[2] == 3
        np.testing.assert_array_equal(mosaic[8 + gap:16 + gap, 9:17], wrong["image"][5])  # row 1, col 1
    else:
        assert mosaic.ndim == 2 and image.get_cmap().name == "gray"
        np.testing.assert_array_equal(mosaic[:8, 9:17], wrong["image"][1])
    labels = [t.get_text() for t in ax.texts if t.get_gid() == "label"]
    assert len(labels) == plot.MAX_IMAGES
    for i in range(3):
        assert labels[i] == f"{names[wrong['predicted'][i]]}\n(true {names[wrong['label'][i]]})"
    # Without class names, class numbers; a single-channel image is drawn grey.
    fig = plot.dashboard_figure(bare(synthetic_history(**SMALL)), misclassified(2, (8, 8, 1)))
    (ax,) = image_axes(fig)
    assert ax.images[0].get_array().ndim == 2
    assert ax.texts[0].get_text().startswith(str(misclassified(2)["predicted"][0]))


def test_dashboard_percentile_panels_per_layer_or_none():
    h = synthetic_history(**SMALL, layers=3)
    fig = plot.dashboard_figure(h)
    assert len(percentile_axes(fig)) == 2 and len(curve_axes(fig)) == 2
    weights = next(ax for ax in fig.axes if ax.get_title().startswith("weights"))
    assert [line.get_label() for line in weights.lines] == ["layer 1", "layer 2", "layer 3"]
    np.testing.assert_allclose(weights.lines[1].get_ydata(), h["weight_percentiles"][:, 1, 3])  # the median
    for key in ("weight_percentiles", "bias_percentiles"):
        h[key] = h[key][:, :0]  # a model without kernel/bias pairs: L = 0
    assert not percentile_axes(plot.dashboard_figure(h))
    fig = plot.dashboard_figure(bare(h), misclassified(0))
    assert not percentile_axes(fig) and len(curve_axes(fig)) == 2 and "no misclassified" in fig.get_suptitle()


def test_dashboard_title_gives_the_final_and_best_accuracy():
    h = synthetic_history(**SMALL)
    h["test_accuracy"][3] = 0.99
    title = plot.dashboard_figure(bare(h), title="my run").get_suptitle()
    assert title.startswith("my run") and f"{h['test_accuracy'][-1]:.4f}" in title
    assert "best 0.9900 at step 30" in title

"""The accuracy plot written next to results.json: two panels (accuracy and the gap to the ANN on
a log scale), 12 x 5 in at 120 dpi, labelled; checked on the matplotlib objects, not pixels."""
import struct

import numpy as np
import pytest

from signgd_jax.commands.evaluate.report import PLOT_FILE, accuracy_figure, write_results

TS = [1, 2, 4, 8, 16, 32, 64, 128]
PAPER = [0.139, 0.263, 0.326, 0.455, 0.863, 0.956, 0.964, 0.964]
IMPROVED = [0.108, 0.105, 0.268, 0.741, 0.910, 0.958, 0.963, 0.965]  # beats the ANN at T=128


@pytest.fixture
def results():
    return {"model": "convnext_mini", "dataset": "mnist5k", "num_test_images": 1000, "timesteps": TS,
            "ann": {"accuracy": 0.964},
            "dynamics": {"paper": {"supported": True, "accuracy": dict(zip(map(str, TS), PAPER))},
                         "improved": {"supported": True, "accuracy": dict(zip(map(str, TS), IMPROVED))},
                         "if": {"supported": False, "reason": "GELU has no integrate-and-fire neuron"}}}


def _png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def test_png_is_written_at_1440_by_600(results, tmp_path):
    _, png = write_results(results, str(tmp_path))
    assert png == str(tmp_path / PLOT_FILE)
    assert _png_size(png) == (1440, 600)


def test_two_labelled_panels_accuracy_and_log_gap(results):
    fig = accuracy_figure(results)
    assert tuple(fig.get_size_inches()) == (12, 5) and fig.dpi == 120
    acc_ax, gap_ax = fig.axes
    assert fig._suptitle is not None
    assert "convnext_mini" in fig._suptitle.get_text() and "mnist5k" in fig._suptitle.get_text()
    for ax in (acc_ax, gap_ax):
        assert ax.get_xlabel() == "time-steps T" and ax.get_xscale() == "log"
        assert [int(t) for t in ax.get_xticks()] == TS
    assert acc_ax.get_ylabel() == "test accuracy (%)"
    assert "percentage points" in gap_ax.get_ylabel()
    assert gap_ax.get_yscale() == "symlog"
    assert gap_ax.yaxis.get_transform().linthresh == pytest.approx(100 / 1000)  # one test image

    legend = [t.get_text() for t in acc_ax.get_legend().get_texts()]
    assert legend == ["paper", "improved", "if: n/a", "ANN (96.40%)"]
    assert gap_ax.get_legend() is not None

    lines = {line.get_label(): line for line in acc_ax.get_lines()}
    np.testing.assert_allclose(lines["paper"].get_ydata(), 100 * np.asarray(PAPER))
    gaps = {line.get_label(): line for line in gap_ax.get_lines()}
    for name, acc in (("paper", PAPER), ("improved", IMPROVED)):
        np.testing.assert_allclose(gaps[name].get_ydata(), 100 * (0.964 - np.asarray(acc)))
        assert gaps[name].get_color() == lines[name].get_color()
    low, high = gap_ax.get_ylim()
    assert low < 100 * (0.964 - 0.965) and high > 100 * (0.964 - 0.105)  # every gap is inside


def test_paper_and_improved_are_apart_near_convergence(results):
    """At T=32 the two accuracies differ by 0.2 points of 100; on the gap panel they are 0.8 and
    0.6 points, far apart on its log scale (display coordinates, not pixels of the PNG)."""
    fig = accuracy_figure(results)
    fig.canvas.draw()
    acc_ax, gap_ax = fig.axes
    i = TS.index(32)

    def y_pixels(ax, name):
        (line,) = [ln for ln in ax.get_lines() if ln.get_label() == name]
        return ax.transData.transform(np.column_stack([line.get_xdata(), line.get_ydata()]))[i, 1]

    apart_acc = abs(y_pixels(acc_ax, "paper") - y_pixels(acc_ax, "improved"))
    apart_gap = abs(y_pixels(gap_ax, "paper") - y_pixels(gap_ax, "improved"))
    assert apart_gap > 5 * apart_acc

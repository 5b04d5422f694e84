"""Shared plotting helpers on a real matplotlib figure."""

from __future__ import annotations

from loralab.plotting import label_points, pyplot


def test_labels_of_close_points_step_down_a_line_each_and_far_ones_stay():
    """trec-c16 (2.65, 1.55) and trec-c50-small (2.77, 1.55) of benchmark v2 sit 0.12 apart on an x span of 6.4:
    the second label goes one line (6 + 3 points) below the first, a third close one two lines; amazon stays put."""
    plt = pyplot()
    fig, ax = plt.subplots()
    label_points(ax, [(2.65, 1.55, "trec-c16"), (2.77, 1.55, "trec-c50-small"), (2.70, 1.60, "third"),
                      (8.9, 0.99, "amazon")])
    offsets = {a.get_text(): a.xyann for a in ax.texts}
    plt.close(fig)
    assert offsets == {"trec-c16": (3, 3), "trec-c50-small": (3, -6), "third": (3, -15), "amazon": (3, 3)}

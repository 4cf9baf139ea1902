"""The overview's spend chart, drawn on the server as SVG geometry (no JavaScript)."""

from dataclasses import dataclass

from dashboard.selectors import SpendDay

WIDTH, HEIGHT = 720, 220
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 56, 8, 12, 28


@dataclass(frozen=True)
class Bar:
    x: float
    width: float
    open_y: float
    open_height: float
    closed_y: float
    closed_height: float
    day: SpendDay


def _nice_ceiling(nanos: int) -> int:
    """The axis top: 1, 2 or 5 times a power of ten, at least the largest day (in nanos)."""
    if nanos <= 0:
        return 10**9  # $1: an empty month still draws an axis
    step = 10**7  # one cent
    while True:
        for factor in (1, 2, 5):
            if step * factor >= nanos:
                return step * factor
        step *= 10


def spend_chart(days: list[SpendDay]) -> dict:
    top = _nice_ceiling(max((d.total_nanos for d in days), default=0))
    plot_w = WIDTH - PAD_LEFT - PAD_RIGHT
    plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM
    slot = plot_w / max(1, len(days))
    bar_w = max(2.0, slot * 0.7)
    bars = []
    for i, day in enumerate(days):
        x = PAD_LEFT + i * slot + (slot - bar_w) / 2
        open_h = plot_h * day.open_nanos / top
        closed_h = plot_h * day.closed_nanos / top
        base = PAD_TOP + plot_h
        bars.append(Bar(x=round(x, 2), width=round(bar_w, 2),
                        open_y=round(base - open_h, 2), open_height=round(open_h, 2),
                        closed_y=round(base - open_h - closed_h, 2),
                        closed_height=round(closed_h, 2), day=day))
    gridlines = [{"y": round(PAD_TOP + plot_h - plot_h * n / 2, 2), "nanos": top * n // 2}
                 for n in (0, 1, 2)]
    # A label each week, and the last day unless it would crowd the previous label.
    last = len(bars) - 1
    labels = [{"x": round(b.x + b.width / 2, 2), "text": b.day.day.strftime("%b %-d")}
              for i, b in enumerate(bars) if (i % 7 == 0 and last - i >= 4)
              or i == last]
    return {"width": WIDTH, "height": HEIGHT, "bars": bars, "gridlines": gridlines,
            "labels": labels, "plot_left": PAD_LEFT, "plot_right": WIDTH - PAD_RIGHT,
            "label_y": HEIGHT - 8, "top_nanos": top,
            "first_day": days[0].day if days else None,
            "last_day": days[-1].day if days else None}

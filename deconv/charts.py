"""Plotly figures for the app: learning curves, confusion matrix, per-class accuracy, top-k, run overlays, feature maps and class evidence."""

from __future__ import annotations

import html
import itertools
from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative, sample_colorscale, unlabel_rgb
from plotly.subplots import make_subplots

TRAIN_COLOUR, VAL_COLOUR = "#1f77b4", "#ff7f0e"
CHOSEN = "#ff7f0e"  # the outline of a chosen confusion-matrix cell


def plain(text: str) -> str:
    """Text from a run's files or a visitor for a tick label, legend or hover: no tag Plotly would draw or link."""
    # Plotly reads a subset of HTML (<a href>, <br>, <span style>) in every text it draws; it turns &lt; &gt; &amp;
    # back into the characters only in the text between the tags it has found.
    return html.escape(str(text), quote=False)


def _layout(fig: go.Figure, height: int) -> go.Figure:
    """Compact margins that grow to fit tick labels and axis titles, and a legend on top.

    automargin is set on every axis because Streamlit makes its own plotly template the default,
    and that template (unlike plotly's) leaves it off: tick labels were clipped and axis titles
    drawn over them.
    """
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=60, b=10),
                      legend=dict(orientation="h", yanchor="bottom", y=1.12, x=0))
    fig.update_xaxes(automargin=True)
    fig.update_yaxes(automargin=True, ticklabelstandoff=4)  # numbers clear of the axis line
    return fig


def smooth(values: Sequence[float], weight: float) -> list[float]:
    """TensorBoard's debiased exponential moving average (weight 0 = raw values)."""
    out, last = [], 0.0
    for i, v in enumerate(values, start=1):
        last = last * weight + (1 - weight) * v
        out.append(last / (1 - weight**i) if weight > 0 else v)
    return out


def learning_curves(history: Sequence[dict[str, Any]], batches: Sequence[dict[str, Any]] = ()) -> go.Figure:
    """Loss and accuracy per epoch (train and validation), with the current epoch's running values."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss", "accuracy"))
    epochs = [h["epoch"] for h in history]
    for col, key in ((1, "loss"), (2, "accuracy")):
        fig.add_trace(go.Scatter(x=epochs, y=[h.get(key) for h in history], name="train", mode="lines+markers",
                                 line=dict(color=TRAIN_COLOUR), showlegend=col == 1), 1, col)
        val = [(h["epoch"], h[f"val_{key}"]) for h in history if f"val_{key}" in h]
        fig.add_trace(go.Scatter(x=[v[0] for v in val], y=[v[1] for v in val], name="validation", mode="lines+markers",
                                 line=dict(color=VAL_COLOUR), showlegend=col == 1), 1, col)
        if batches:  # the epoch in progress, as a fraction of an epoch
            xs = [b["epoch"] - 1 + b["batch"] / b["batches"] for b in batches]
            fig.add_trace(go.Scatter(x=xs, y=[b[key] for b in batches], name="train (this epoch)", mode="lines",
                                     line=dict(color=TRAIN_COLOUR, dash="dot"), showlegend=col == 1), 1, col)
    fig.update_xaxes(title_text="epoch", rangemode="tozero")
    fig.update_yaxes(rangemode="tozero")
    return _layout(fig, 320)


INK, ON_DARK = "#262730", "white"  # Streamlit's text colour; white where a cell is too dark for it


def _ink(colour: str) -> str:
    """Text colour that reads on a cell of `colour` ("rgb(r, g, b)"): white when the cell is dark."""
    r, g, b = (c / 255 for c in unlabel_rgb(colour))
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b  # sRGB weights, gamma ignored: enough to pick a side
    return ON_DARK if luminance < 0.5 else INK


def count_font_size(largest: int) -> int:
    """Font size of the counts in the cells: smaller as the largest count gets more digits.

    Sized for the Train page's left column (about 780 px, cells about 45 px): 4 digits at 11 px are 28 px wide.
    """
    return {1: 14, 2: 14, 3: 13, 4: 11}.get(len(str(int(largest))), 9)


def confusion(matrix: np.ndarray, labels: Sequence[str], clickable: bool = False,
              chosen: tuple[int, int] | None = None) -> go.Figure:
    """Heatmap of counts, rows the true classes and columns the predictions; hover adds each row's share.

    With `clickable`, an invisible square marker sits on every cell (plotly heatmaps report no selection to
    Streamlit; markers do): a click selects that cell's marker, drawn as an outline, as is the `chosen` cell.
    """
    counts = np.asarray(matrix).astype(int)
    labels = [plain(v) for v in labels]
    totals = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    top = max(int(counts.max(initial=0)), 1)
    hover = "true %{y}, predicted %{x}<br>%{customdata[0]} images, %{customdata[1]:.1%} of the true %{y}"
    fig = go.Figure(go.Heatmap(
        z=counts, x=labels, y=labels, customdata=np.stack([counts, share], -1), colorscale="Blues", zmin=0, zmax=top,
        showscale=False, xgap=1, ygap=1, hovertemplate=hover + "<extra></extra>",
        hoverinfo="skip" if clickable else None))
    if clickable:
        n = len(labels)
        cells = [(i, j) for i in range(n) for j in range(n)]
        fig.add_trace(go.Scatter(
            x=[labels[j] for _, j in cells], y=[labels[i] for i, _ in cells], mode="markers", showlegend=False,
            customdata=[[counts[i, j], share[i, j]] for i, j in cells], hovertemplate=hover + "<extra></extra>",
            marker=dict(symbol="square-open", size=30, color=CHOSEN, opacity=0, line_width=3),
            selected=dict(marker_opacity=1), unselected=dict(marker_opacity=0),
            selectedpoints=[chosen[0] * n + chosen[1]] if chosen else None))
    # The counts as annotations, not the heatmap's own text: a heatmap has one text colour for all cells.
    colours = sample_colorscale("Blues", (counts / top).ravel().tolist())
    size = count_font_size(top)
    fig.update_layout(annotations=[
        dict(x=labels[j], y=labels[i], text=str(counts[i, j]), showarrow=False,
             font=dict(size=size, color=_ink(colours[i * len(labels) + j])))
        for i in range(len(labels)) for j in range(len(labels))])
    # Square cells: the y axis keeps the x axis' scale, and each shrinks its domain rather than leave gaps.
    edge = len(labels) - 0.5  # fixed ranges: the cell markers would otherwise widen the axes by their size
    fig.update_yaxes(type="category", range=[edge, -0.5], title_text="true class", tickmode="linear", scaleanchor="x",
                     constrain="domain", constraintoward="top", automargin=True, ticks="", tickfont_size=12,
                     ticklabelstandoff=4)
    fig.update_xaxes(type="category", range=[-0.5, edge], title_text="predicted class", tickmode="linear",
                     tickangle=-45, constrain="domain", automargin=True, ticks="", tickfont_size=12,
                     ticklabelstandoff=4)
    fig.update_layout(height=500, margin=dict(l=10, r=10, t=20, b=10), plot_bgcolor="white")
    return fig


def per_class(accuracy: np.ndarray, labels: Sequence[str]) -> go.Figure:
    """Horizontal bars of accuracy per class, first class on top: names and percentages never overlap."""
    fig = go.Figure(go.Bar(
        y=[plain(v) for v in labels], x=accuracy, orientation="h", marker_color=TRAIN_COLOUR,
        text=[f"{a:.0%}" for a in accuracy], textposition="outside", textfont=dict(color=INK, size=12),
        cliponaxis=False,
        hovertemplate="%{y}: %{x:.1%}<extra></extra>"))
    fig.update_xaxes(range=[0, 1.2], tickformat=".0%", tickvals=[0, 0.25, 0.5, 0.75, 1], title_text="accuracy",
                     automargin=True)
    fig.update_yaxes(type="category", autorange="reversed", tickmode="linear", automargin=True, tickfont_size=12,
                     ticklabelstandoff=4)
    fig.update_layout(height=420, margin=dict(l=10, r=10, t=20, b=10), bargap=0.25)
    return fig


def top_k(labels: Sequence[str], probabilities: Sequence[float], true_label: str | None = None) -> go.Figure:
    """Horizontal bars of the top-k probabilities, the true label (if known) in green."""
    colours = ["#2ca02c" if lab == true_label else TRAIN_COLOUR for lab in labels]
    fig = go.Figure(go.Bar(x=list(probabilities)[::-1], y=[plain(v) for v in labels][::-1], orientation="h",
                           marker_color=colours[::-1], text=[f"{p:.1%}" for p in list(probabilities)[::-1]],
                           textposition="auto"))
    fig.update_xaxes(range=[0, 1], tickformat=".0%")
    fig.update_yaxes(type="category")  # class names that look like numbers ("7") are names all the same
    return _layout(fig, 220)


def overlay(runs: Sequence[tuple[str, Sequence[dict[str, Any]]]], key: str, title: str,
            weight: float = 0.0) -> go.Figure:
    """One metric of several runs against epochs, smoothed like TensorBoard, each run its own colour."""
    fig = go.Figure()
    last = 1
    for (name, history), colour in zip(runs, itertools.cycle(qualitative.D3)):
        points = [(h["epoch"], h[key]) for h in history if key in h]
        last = max([last] + [p[0] for p in points])
        fig.add_trace(go.Scatter(x=[p[0] for p in points], y=smooth([p[1] for p in points], weight), name=plain(name),
                                 mode="lines+markers", line=dict(color=colour)))
    accuracy = "accuracy" in key
    fig.update_xaxes(title_text="epoch", tick0=0, dtick=max(1, -(-last // 10)),  # whole epochs
                     automargin=True, title_standoff=8)
    fig.update_yaxes(title_text=title, range=[0, 1] if accuracy else None, tickformat=".0%" if accuracy else None,
                     rangemode="tozero", automargin=True, title_standoff=8)
    fig = _layout(fig, 380)
    fig.update_layout(margin=dict(t=30), legend=dict(y=1.02, title_text=""))  # the legend just above the plot
    return fig


HEAT = [[0.0, "rgba(255,255,0,0)"], [0.4, "rgba(255,170,0,0.35)"], [1.0, "rgba(220,0,0,0.8)"]]  # clear where low


def feature_grid(tiles: np.ndarray, channels: Sequence[int], title: str, per_row: int = 8) -> go.Figure:
    """One block's channels (k, h, w), each already scaled to [0, 1], side by side as one image; hover names them."""
    k, h, w = tiles.shape
    rows, gap = -(-k // per_row), max(1, h // 16)
    mosaic = np.full((rows * (h + gap) - gap, per_row * (w + gap) - gap), np.nan, np.float32)
    channel = np.zeros(mosaic.shape, np.uint8)  # widths are at most 256
    for i, (tile, c) in enumerate(zip(tiles, channels)):
        top, left = i // per_row * (h + gap), i % per_row * (w + gap)
        mosaic[top:top + h, left:left + w], channel[top:top + h, left:left + w] = tile, c
    fig = go.Figure(go.Heatmap(z=mosaic, customdata=channel, zmin=0, zmax=1, colorscale="Viridis", showscale=False,
                               hoverongaps=False, hovertemplate="channel %{customdata}<br>%{z:.2f} of its peak"
                               "<extra></extra>"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, autorange="reversed", scaleanchor="x", constraintoward="top")  # square, row 0 atop
    fig.update_layout(title=dict(text=title, font_size=14), height=60 + 50 * rows, margin=dict(l=0, r=0, t=60, b=0))
    return fig


def heat_overlay(image: np.ndarray, heat: np.ndarray, title: str) -> go.Figure:
    """A 32x32 RGB image with a [0, 1] map over it: see-through where low, red where high."""
    fig = go.Figure([go.Image(z=image, hoverinfo="skip"),
                     go.Heatmap(z=heat, zmin=0, zmax=1, zsmooth="best", colorscale=HEAT, showscale=False,
                                hovertemplate="x %{x}, y %{y}<br>%{z:.2f} of the peak<extra></extra>")])
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, scaleanchor="x")
    fig.update_layout(title=dict(text=title, font_size=14), height=260, margin=dict(l=0, r=0, t=40, b=0))
    return fig

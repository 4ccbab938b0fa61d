"""Inside a trained network, for Classify and Runs: deconvnet projections and each channel's top patches; and how
the pages run what they compute on a run: within its budget, kept, and the heavy work beside the page's script."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Hashable, Sequence

import numpy as np
import streamlit as st

from deconv import data, images, runs
from deconv.computations import Compute, Failed, Progress, Task, alone
from deconv.config import NUM_CLASSES
from deconv.cost import PATCHES, PageWork, describe, inside_work, patch_images, patch_work
from pages.parts import server, text

if TYPE_CHECKING:
    from deconv import explain  # imported where it is used: it loads TensorFlow

PATCH_SHOWN = 8  # channels whose top patches are drawn per row
POLL_SECONDS = 1.0  # how often a page asks how far the worker got
REFUSED = ":material/hourglass_disabled:"  # the icon of a computation refused for its cost


def computed_each(keys: Sequence[Hashable], work: PageWork, doing: str, compute: Compute,
                  refusal: str) -> list[Any] | None:
    """The value of each key, kept or computed now; None with a progress line while the worker computes heavy work,
    or with `refusal` when the work costs more than its budget. What a heavy task raised is raised here."""
    if not work.allowed:
        st.warning(refusal, icon=REFUSED)
        return None
    values, tasks = server.COMPUTED.get(keys, compute, work.heavy)
    if tasks:
        progress_line(tasks, f"{doing}: about {text.fmt_seconds(work.seconds)} of computing by the cost model")
        return None
    for value in values:
        if isinstance(value, Failed):
            raise value.error
    return values


def computed(key: Hashable, work: PageWork, doing: str, compute: Callable[[Progress], Any], refusal: str) -> Any:
    """One value, as `computed_each`."""
    values = computed_each([key], work, doing, alone(compute), refusal)
    return None if values is None else values[0]


def too_costly(work: PageWork, what: str, advice: str = "") -> str:
    """Why the page does not compute `what`: its estimate against its budget, and what to do instead."""
    return (f"Not computed here: {what} would take about {text.fmt_seconds(work.bounded_seconds)} on this server "
            f"({work.bounded / 1e9:,.0f} GFLOPs), more than the {text.fmt_seconds(work.budget_seconds)} a page may "
            f"spend on it. {advice or 'This network is too costly for the pages of this server.'}")


@st.fragment(run_every=POLL_SECONDS)
def progress_line(tasks: list[Task], doing: str) -> None:
    """How far the worker got, asked every POLL_SECONDS (which keeps the tasks alive); the whole page once done."""
    for task in tasks:
        task.ask()
    if all(task.finished.is_set() for task in tasks):
        st.rerun()
    waiting = "" if any(task.started for task in tasks) else " (waiting for another visitor's computation first)"
    st.progress(sum(task.fraction for task in tasks) / len(tasks), text=doing + waiting)


def training_images(path: str, train_size: int, seed: int, most: int) -> np.ndarray:
    """The first `most` of the training images a run was trained on (all the folder has, if it has fewer)."""
    def read() -> np.ndarray:
        source = data.DataSource(Path(path), "")
        x, y = data.read_train(source)
        fits = min(train_size, NUM_CLASSES * int(np.bincount(y, minlength=NUM_CLASSES).min()))
        return x[data.stratified_indices(y, fits, seed)[:most]]

    return server.TRAINING_IMAGES.get((path, train_size, seed, most), read)


def block_names(run: runs.RunInfo) -> list[str]:
    """The run's conv and deconv blocks in network order, from its config (no model is built)."""
    return [c.name.removesuffix("_relu") for c in describe(run.model_config).layers if c.name.endswith("_relu")]


def patch_grid(patches: np.ndarray) -> np.ndarray:
    """(PATCHES, s, s, 3) crops as one 3x3 grid image with 1-pixel white gaps."""
    n, s = patches.shape[:2]
    side = int(np.ceil(np.sqrt(n)))
    grid = np.full((side * (s + 1) - 1, side * (s + 1) - 1, 3), 255, np.uint8)
    for i, patch in enumerate(patches):
        r, c = divmod(i, side)
        grid[r * (s + 1):r * (s + 1) + s, c * (s + 1):c * (s + 1) + s] = patch
    return grid


def projection_panel(key: str, run: runs.RunInfo, view: np.ndarray, view_key: str, blocks: list[str]) -> None:
    """Zeiler and Fergus's deconvnet: one activation of a chosen block and channel sent back to the pixels."""
    st.markdown("**Deconvnet projection** (Zeiler & Fergus 2014): one activation, the rest of its layer zeroed, run "
                "back through the network to the pixels with the transposed filters, max pooling's switches and a "
                "ReLU on the way back; guided backpropagation beside it also stops where the forward pass was "
                "negative.")
    a, b = st.columns(2)
    block = a.selectbox("Block", blocks, index=len([n for n in blocks if n.startswith("block")]) - 1,
                        key=f"proj-block-{key}", help="the deepest encoder block is chosen first")
    width = describe(run.model_config).layer(f"{block}_relu").output_shape[-1]
    channel = b.number_input(f"Channel (0 to {width - 1}; empty: the strongest activation)", 0, width - 1, None,
                             key=f"proj-channel-{key}")
    chosen = None if channel is None else int(channel)
    model = server.model_for(run)

    def project(progress: Progress) -> explain.Projection:
        from deconv import explain

        return explain.project(model, view, block, chosen, explain.backward_probes(model))

    work = inside_work(run.model_config, "projection", block)
    found = computed((str(run.path), run.version, "projection", view_key, block, chosen), work,
                     f"Projecting an activation of {block} back to the pixels", project,
                     too_costly(work, f"projecting an activation of {block}", "An earlier block costs less."))
    if found is None:
        return
    cols = st.columns(4)
    cols[0].image(images.enlarge(view, 160), caption="the image", width=160)
    size = found.feature_map.shape[0]
    fmap = (found.feature_map * 255).astype(np.uint8)
    marked = np.stack([fmap] * 3, -1)
    marked[found.position] = (255, 120, 0)  # the projected activation, in orange
    cols[1].image(images.enlarge(marked, 160), width=160,
                  caption=f"{found.label}: {size}x{size} map, the projected activation {found.activation:.2f} in orange")
    cols[2].image(images.enlarge((found.deconvnet * 255).astype(np.uint8), 160), width=160,
                  caption="deconvnet projection (grey: nothing came back)")
    cols[3].image(images.enlarge((found.guided * 255).astype(np.uint8), 160), width=160,
                  caption="guided backpropagation")


def top_patches_panel(key: str, run: runs.RunInfo, blocks: list[str]) -> None:
    """For a chosen block, the training images that excite each of its most active channels most."""
    path = data.own_folder(run.meta.data.path)
    if path is None:  # trained elsewhere: CIFAR-10's training images here will do
        source = data.find_data()
        if source is None or not source.has_train:
            st.caption("Top patches need CIFAR-10's training images, which are not on this server.")
            return
        path = str(source.path)
    block = st.selectbox("Top patches of block", blocks, index=len([n for n in blocks if n.startswith("block")]) - 1,
                         key=f"patch-block-{key}")
    train = run.train_config
    work = patch_work(run.model_config, train.train_size, block)
    count = patch_images(run.model_config, train.train_size, block)
    refusal = too_costly(work, f"cropping the top patches of {block} (a gradient per channel and patch)",
                         "An earlier block costs less.")
    if not work.allowed:
        st.warning(refusal, icon=REFUSED)
        return
    if not st.toggle(f"Search up to {count:,} training images for what each channel of {block} responds to",
                     key=f"patch-go-{key}"):
        return

    def search(progress: Progress) -> explain.TopPatches:
        from deconv import explain

        x = training_images(path, train.train_size, train.seed, count)
        return explain.top_patches(model, x, block, probes=explain.backward_probes(model), progress=progress,
                                   batch_size=min(250, describe(run.model_config).eval_batch(block)))

    try:
        model = server.model_for(run)
        found = computed((str(run.path), run.version, "top patches", path, train.train_size, train.seed, block, count),
                         work, f"Running {count:,} training images through the network", search, refusal)
    except (data.DataError, runs.RunError) as e:
        st.error(f"No top patches: {text.plain(str(e))}.")
        return
    if found is None:
        return
    st.caption(f"Each grid: the {PATCHES} of {found.searched:,} training images that excite one channel most "
               "(strongest top left), each cropped to the pixels its strongest unit sees, as in Zeiler & Fergus's "
               f"figures. The {len(found.channels)} channels most active on average, most active first.")
    for row in range(0, len(found.channels), PATCH_SHOWN):
        for col, c, patches in zip(st.columns(PATCH_SHOWN), found.channels[row:row + PATCH_SHOWN],
                                   found.patches[row:row + PATCH_SHOWN]):
            col.image(patch_grid(patches), caption=f"channel {c}", width="stretch")

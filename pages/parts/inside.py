"""Inside a trained network, for Classify and Runs: deconvnet projections and each channel's top patches."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import streamlit as st

from deconv import data, images, runs
from deconv.config import NUM_CLASSES, TrainConfig
from deconv.cost import PATCHES, describe, patch_images
from pages.parts import server

if TYPE_CHECKING:
    from deconv import explain  # imported where it is used: it loads TensorFlow

PATCH_SHOWN = 8  # channels whose top patches are drawn per row


@st.cache_resource(max_entries=2, ttl=server.MODEL_TTL_SECONDS, show_spinner=False)
def backward_probes(path: str, mtime: float) -> Any:
    """A run's cached model with its ReLUs rewired for deconvnet, guided and open backward passes."""
    from deconv import explain

    return explain.backward_probes(server.load_model(path, mtime))


@st.cache_data(max_entries=32, show_spinner=False)
def projection(path: str, mtime: float, view: np.ndarray, block: str, channel: int | None) -> explain.Projection:
    """One activation of one block projected back to the pixels, cached."""
    from deconv import explain

    return explain.project(server.load_model(path, mtime), view, block, channel, backward_probes(path, mtime))


@st.cache_data(show_spinner=False, max_entries=2)
def training_images(path: str, train_size: int, seed: int, most: int) -> np.ndarray:
    """The first `most` of the training images a run was trained on (all the folder has, if it has fewer)."""
    source = data.DataSource(Path(path), "")
    x, y = data.read_train(source)
    fits = min(train_size, NUM_CLASSES * int(np.bincount(y, minlength=NUM_CLASSES).min()))
    return x[data.stratified_indices(y, fits, seed)[:most]]


@st.cache_data(max_entries=8, show_spinner=False)
def top_patches(path: str, mtime: float, data_path: str, train: TrainConfig, block: str, count: int,
                batch: int) -> explain.TopPatches:
    """The top patches of a block's channels over the run's training images, computed once per run and block."""
    from deconv import explain

    x = training_images(data_path, train.train_size, train.seed, count)
    return explain.top_patches(server.load_model(path, mtime), x, block, probes=backward_probes(path, mtime),
                               batch_size=batch)


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


def projection_panel(key: str, run: runs.RunInfo, view: np.ndarray, blocks: list[str]) -> None:
    """Zeiler and Fergus's deconvnet: one activation of a chosen block and channel sent back to the pixels."""
    path, mtime = str(run.path), run.version
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
    with st.spinner("Projecting back to the pixels..."):
        found = projection(path, mtime, view, block, None if channel is None else int(channel))
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
    path = run.meta.data.path
    if not path or not Path(path).is_dir():  # trained elsewhere: CIFAR-10's training images here will do
        source = data.find_data()
        if source is None or not source.has_train:
            st.caption("Top patches need CIFAR-10's training images, which are not on this server.")
            return
        path = str(source.path)
    block = st.selectbox("Top patches of block", blocks, index=len([n for n in blocks if n.startswith("block")]) - 1,
                         key=f"patch-block-{key}")
    count = patch_images(run.model_config, run.train_config.train_size)
    if not st.toggle(f"Search up to {count:,} training images for what each channel of {block} responds to",
                     key=f"patch-go-{key}"):
        return
    try:
        with st.spinner(f"Running {count:,} training images through the network..."):
            found = top_patches(str(run.path), run.version, path, run.train_config, block, count,
                                min(250, describe(run.model_config).eval_batch()))
    except (data.DataError, runs.RunError) as e:
        st.error(f"No top patches: {e}.")
        return
    st.caption(f"Each grid: the {PATCHES} of {found.searched:,} training images that excite one channel most "
               "(strongest top left), each cropped to the pixels its strongest unit sees, as in Zeiler & Fergus's "
               f"figures. The {len(found.channels)} channels most active on average, most active first.")
    for row in range(0, len(found.channels), PATCH_SHOWN):
        for col, c, patches in zip(st.columns(PATCH_SHOWN), found.channels[row:row + PATCH_SHOWN],
                                   found.patches[row:row + PATCH_SHOWN]):
            col.image(patch_grid(patches), caption=f"channel {c}", width="stretch")

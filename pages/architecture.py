"""Architecture: every ModelConfig knob, with the network's cost updated on each change."""

import numpy as np
import streamlit as st

from deconv import data, glossary, samples
from deconv.config import IMAGE_SIZE, PRESETS, ModelConfig, field_spec
from deconv.cost import HEAVY_FLOPS, describe
from pages.parts import first_visit, settings, take_home, text
from pages.parts.settings import LENGTH, config_widget
from pages.parts.state import MODEL, TRAIN

first_visit.require_app()

SLOW_EPOCH_SECONDS = 300  # above this, say plainly that training will be slow
CHECKERBOARD_IMAGES = 16  # test images the checkerboard score is measured on


def use_preset(name: str) -> None:
    """on_click: load a preset into the config and its widgets."""
    st.session_state[MODEL] = PRESETS[name]
    st.session_state.pop(f"{MODEL}.error", None)
    settings.sync_widgets(MODEL)


@st.cache_data(max_entries=16, show_spinner=False)
def upsampling_ab(config: ModelConfig) -> dict[str, dict[str, float]]:
    """Checkerboard scores of the network at its initial weights, with each way of upsampling, on test images."""
    from deconv import explain

    source = data.find_data()
    if source is not None:
        pictures = data.read_test(source)[0][:CHECKERBOARD_IMAGES]
    else:
        pictures = samples.synthetic_images(np.arange(CHECKERBOARD_IMAGES) % 10, seed=0).reshape(
            -1, 3, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 3, 1)
    return {way: explain.untrained_checkerboards(config.replace(upsample=way), pictures)
            for way in field_spec(ModelConfig, "upsample").choices}


def checkerboard_scores(config: ModelConfig) -> None:
    """On request: the checkerboard score of each upsampling layer, for both ways of upsampling, side by side."""
    if not config.deconv_shapes() or describe(config).flops > HEAVY_FLOPS:
        return
    if not st.toggle("Measure the checkerboard score of each upsampling layer", key="architecture.checkerboard",
                     help="the spread of a map's mean over the stride's 2x2 positions, over its mean: 0 is even"):
        return
    try:
        with st.spinner("Running test images through the network, both ways of upsampling..."):
            scores = upsampling_ab(config)
    except data.DataError as e:
        st.error(f"{e}.")
        return
    st.dataframe([{"layer": layer, **{f"{way} (score)": round(scores[way][layer], 2) for way in scores}}
                  for layer in scores[config.upsample]], hide_index=True, width="stretch")
    st.caption(f"Median over {CHECKERBOARD_IMAGES} CIFAR-10 test images, of this network at its initial weights, "
               "with each upsampling: what the layer does before training shapes it. Classify → Look inside shows "
               "a trained model's score. docs/network.md: how the two compare once trained.")


st.title("Architecture")
st.markdown("Choose the blocks of the network. An **encoder** of Conv2D blocks makes the feature maps smaller and "
            "deeper; Conv2DTranspose (deconv) layers map them back up to larger maps: in a **decoder** after the "
            "blocks (each decoder block doubles the map and can add the encoder's map of that size, as in a U-Net), "
            "or, as in the article, at the end of every block. Every conv and deconv has BatchNormalization and "
            "ReLU; the cost below updates as you move a slider.")

a, b, _ = st.columns([1, 1, 3])
a.button("Fast default", on_click=use_preset, args=("default",), icon=":material/bolt:",
         help="sized for a 2-core CPU: 3 conv blocks down to 4x4, one stride-2 deconv back up to 8x8 with a "
              "skip connection, adaptive pooling; trains in about a minute")
b.button("The article's network", on_click=use_preset, args=("article",), icon=":material/menu_book:",
         help="the exact network of the article: 84,325,418 parameters")
take_home.script_button()
settings.config_error(MODEL)

left, right = st.columns([1, 2], gap="large")
with left:
    config_widget(MODEL, "widths", "Number of blocks", part=LENGTH)
    config = st.session_state[MODEL]
    for i in range(config.blocks):
        config_widget(MODEL, "widths", f"Block {i + 1} width (filters)", part=i)
    c1, c2 = st.columns(2)
    config_widget(MODEL, "conv_kernel", "Conv kernel", container=c1)
    config_widget(MODEL, "conv_stride", "Conv stride", container=c2)
    config_widget(MODEL, "downsample", "Downsample (blocks with conv stride 2)")
    d1, d2 = st.columns(2)
    config_widget(MODEL, "up_blocks", "Decoder blocks", container=d1)
    config_widget(MODEL, "deconv_kernel", "Deconv kernel", container=d2)
    config_widget(MODEL, "upsample", "How deconvs upsample")
    config_widget(MODEL, "skips", "Skip connections (U-Net)")
    config_widget(MODEL, "block_deconvs", "A deconv in every block (the article's)")
    if st.session_state[MODEL].block_deconvs:
        config_widget(MODEL, "deconv_stride", "Block deconv stride")
    config_widget(MODEL, "head", "Head")
    config = st.session_state[MODEL]
    if config.head == "adaptive":
        config_widget(MODEL, "pool_size", "Adaptive pooling output size", high=config.feature_sizes()[-1])
    config_widget(MODEL, "mirror_predict", "Predict with the mirror image too")

config = st.session_state[MODEL]
cost = describe(config)
train_size = st.session_state[TRAIN].train_size
epoch_seconds = cost.train_seconds_per_epoch(train_size)
with right:
    m = st.columns(2) + st.columns(2)
    m[0].metric("Parameters", f"{cost.params:,}")
    m[1].metric("FLOPs per image", text.fmt_count(cost.flops))
    m[2].metric("Activations per image", f"{cost.activation_bytes / 2**20:.1f} MiB")
    m[3].metric("Time per epoch", f"~{text.fmt_seconds(epoch_seconds)}",
                help=f"estimated for {train_size:,} training images on 2 CPU cores from the FLOPs; "
                     "the Train page shows the real speed")
    if epoch_seconds > SLOW_EPOCH_SECONDS:
        st.warning(
            f"**This network is slow to train here.** One epoch of {train_size:,} images needs about "
            f"{text.fmt_seconds(epoch_seconds)} on 2 CPU cores ({text.fmt_count(3 * cost.flops)}FLOPs per "
            f"training image), and its weights alone take {cost.param_bytes / 2**20:,.0f} MiB. "
            "Try it with a small training subset and one epoch, or use the fast default.",
            icon=":material/hourglass_top:")
    sizes = config.feature_sizes()
    steps = [f"{s}{'↑' if s > p else '↓' if s < p else ''}" for p, s in zip([IMAGE_SIZE, *sizes], sizes)]
    st.caption(f"Feature map size through the network: {IMAGE_SIZE} → " + " → ".join(steps) + f" → head ({config.head}{f', {config.pool_size}x{config.pool_size}' if config.head == 'adaptive' else ''})")
    st.dataframe(cost.as_rows(), hide_index=True, width="stretch", height=min(38 + 35 * len(cost.layers), 560))
    with st.expander("What is this layer?", icon=":material/school:"):
        explained = {e.kind: e for e in glossary.explain(config)}
        kind = st.selectbox("Layer type (the table's **type** column)", list(explained),
                            key="architecture.layer_type")
        st.markdown(explained[kind].text)
        st.markdown("In this network:\n" + "\n".join(f"- `{r.layer}`: {r.note}" for r in explained[kind].rows))

    st.subheader("Deconv shape calculator")
    shapes = config.deconv_shapes()
    st.dataframe([{"layer": d.layer, "input": f"{d.size_in}x{d.size_in}",
                   "output": f"{d.size_out}x{d.size_out}", "kernel": d.kernel, "stride": d.stride,
                   "overlap": "uneven: checkerboard risk" if d.uneven else "even (resize)" if d.resize else "even"}
                  for d in shapes],
                 hide_index=True, width="stretch")
    st.caption("With padding 'same' a transposed convolution's output is its input times the stride "
               "(with 'valid' it would be (input − 1) × stride + kernel); so is a resize's (UpSampling2D).")
    if any(d.uneven for d in shapes):
        d = next(d for d in shapes if d.uneven)
        st.warning(f"**Checkerboard risk:** kernel {d.kernel} is not divisible by stride {d.stride}, so neighbouring "
                   "output pixels receive different numbers of kernel contributions, the uneven overlap that "
                   "paints checkerboard patterns into upsampled maps. Use a kernel that is a multiple of the "
                   f"stride ({', '.join(str(k) for k in range(d.stride, 8, d.stride))}), stride 1, or resize upsampling "
                   "(UpSampling2D then a Conv2D: every output pixel sees the same overlap).",
                   icon=":material/grid_on:")
    checkerboard_scores(config)

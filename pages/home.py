"""Home: what the app does, the idea behind the network, where the data comes from."""

import streamlit as st

from deconv import data
from pages.parts import first_visit, server, state, text

first_visit.require_app()

st.title("Deconv Lab")
st.markdown(
    "Design a **deconvolutional network**, train it on CIFAR-10 while you watch it learn, then use it. "
    "Change the blocks on **Architecture** and see the cost at once; press Train on **Train** and follow the "
    "curves live; classify your own pictures on **Classify**; keep and compare what you trained on **Runs**.")

st.subheader("The idea")
st.markdown(
    "Conv2D blocks extract features and make the maps smaller; Conv2DTranspose (*deconv*) layers map them back "
    "up to larger feature maps; an adaptive pooling head summarises each channel to a fixed size; a softmax "
    "layer classifies. The article puts a deconv after every conv block and upsamples three times, to 256x256. "
    "The fast default is an encoder-decoder: three conv blocks take a 32x32 image down to 4x4x128, then a "
    "stride-2 deconv maps it back up to 8x8, where the encoder's own 8x8 map is added (a U-Net skip) and a "
    "conv follows, before the pooling head. When it answers, it also looks at the mirror image and averages the "
    "two answers (test-time augmentation: a cat facing left is still a cat). For an input of size $i$, kernel $k$, "
    "stride $s$ and `same` padding:")
st.latex(r"\text{conv: } o = \left\lceil \tfrac{i}{s} \right\rceil \qquad "
         r"\text{deconv: } o = i \cdot s \qquad "
         r"\text{adaptive pool: } o = p \;\text{(any } i\text{)}")
st.latex(r"\hat{y} = \operatorname{softmax}\!\Big(W \cdot \operatorname{pool}_p\big(\,"
         r"\underbrace{U_m \circ \cdots \circ U_1}_{\text{decoder: deconv } \uparrow 2\text{, skip, conv}}"
         r"\circ \underbrace{B_n \circ \cdots \circ B_1}_{\text{blocks: conv (and deconv)}}(x)\big) + b\Big)")

st.subheader("The data")
try:
    source = data.find_data()
except data.DataError as e:
    source = None
    st.error(f"{e}.")
if source:
    st.success(f"CIFAR-10 found: {source.describe()}.")
    if not source.has_train:
        st.warning("This folder has test images only: you can classify and evaluate, not train.")
else:
    st.info(f"CIFAR-10 is not on this machine yet. It is downloaded once ({data.ARCHIVE_MB} MB) into the Keras cache, "
            "the same place `keras.datasets.cifar10` uses; training also downloads it when needed.")
    if st.button("Download CIFAR-10 now", icon=":material/download:"):
        bar = st.progress(0.0, text="Downloading CIFAR-10...")

        def progress(done: int, total: int) -> None:
            bar.progress(min(done / total, 1.0) if total > 0 else 0.0,
                         text=f"Downloading CIFAR-10: {done / 2**20:.0f} of {max(total, 0) / 2**20:.0f} MB")

        try:
            server.import_keras()  # the download goes through Keras' get_file
            found = data.download(progress)
            st.success(f"Downloaded and extracted to {found.path}.")
        except data.DataError as e:
            st.error(f"{e}")

st.subheader("Your model")
run = state.active_run()
if run and state.is_reference(run):
    st.markdown(f"Active model: the **reference model** shipped with the app ({text.architecture_summary(run.model_config)}"
                f"), until you train one on **Train** or pick a saved run on **Runs**.")
elif run:
    st.markdown(f"Active model: **{text.plain(run.name)}** ({text.architecture_summary(run.model_config)}).")
else:
    st.markdown("No active model yet. Start on **Architecture**, or go straight to **Train** with the fast default.")

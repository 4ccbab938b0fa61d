"""Plain-words explanations of the network's layers and training terms, with this network's own numbers.

`LAYERS` says what each layer type in the Architecture table does; `explain(config)` adds, for every
row of that table, what the layer does in this network and why its shape changes. Written for students:
a few sentences each, no formulas beyond the arithmetic of the shapes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from deconv.config import IMAGE_SIZE, NUM_CLASSES, ModelConfig, TrainConfig, field_spec
from deconv.cost import LayerCost, describe

LAYERS: dict[str, str] = {
    "Rescaling": (
        "Divides every pixel by 255, so the 0-255 values of an image become numbers between 0 and 1. Networks "
        "learn more easily from small inputs of similar size, and doing it inside the model means an image can be "
        "given to it exactly as it is stored. Nothing is learnt."),
    "Conv2D": (
        "A convolution slides a small window (the kernel, for example 3x3) over the map and, at every position, "
        "adds up the values under it, each multiplied by a learnt weight. Each filter has its own weights and "
        "learns to respond to one kind of pattern (an edge, a colour blob, a texture); the output has one channel "
        "per filter. The stride is how far the window jumps: with stride 2 it visits every other position, so the "
        "output is half as wide and high (padding 'same': out = ceil(in / stride))."),
    "BatchNormalization": (
        "Rescales each channel so that, over a batch of images, it has mean 0 and standard deviation 1, then "
        "applies a learnt scale and shift. This keeps the numbers flowing through the network in a steady range, "
        "so training tolerates a larger learning rate and depends less on the starting weights. While training it "
        "uses each batch's own mean and variance; when predicting, the running averages it kept during training. "
        "It holds 4 numbers per channel: the learnt scale and shift, and the two running averages."),
    "ReLU": (
        "Rectified Linear Unit: keeps positive values and replaces negative ones with 0 (out = max(0, x)). "
        "Without a bend like this between them, a stack of convolutions would add up to one single linear "
        "function; with it, the network can learn curved boundaries between classes. Nothing is learnt."),
    "Conv2DTranspose": (
        "A transposed convolution (often called a deconvolution) runs a convolution backwards: every input pixel "
        "stamps a copy of the kernel, scaled by its value, onto the output, and where stamps overlap they are "
        "added. The stride is the distance between neighbouring stamps, so stride 2 doubles the map. Output size "
        "with padding 'same': out = in x stride; with padding 'valid': out = (in - 1) x stride + kernel. When the "
        "kernel is not a multiple of the stride, some output pixels receive more stamps than their neighbours, "
        "which can paint checkerboard patterns into the map."),
    "UpSampling2D": (
        "Resize-then-convolve, the other way to map features up (Odena, Dumoulin and Olah, 'Deconvolution and "
        "Checkerboard Artifacts', 2016): each pixel is repeated stride x stride times (nearest neighbour), so a "
        "stride of 2 doubles the map, and the Conv2D after it learns how to smooth and recombine the copies. Every "
        "output pixel then sees the same number of input pixels, so no checkerboard pattern can come from uneven "
        "overlap. Nothing is learnt in the resize itself."),
    "MaxPooling2D": (
        "Keeps the largest value of each 2x2 window of every channel, so the map is half as wide and high: where "
        "a pattern was found strongly anywhere in the window survives, its exact position is forgotten. Nothing "
        "is learnt."),
    "Add": (
        "A skip connection, as in a U-Net: the decoder's map, just mapped back up by a stride-2 deconvolution, and "
        "the encoder's earlier map of the same size and width are added value by value, so the finer details the "
        "encoder saw at that size come back. Nothing is learnt."),
    "AdaptiveAveragePooling2D": (
        "Averages a map of any size n x n down to a fixed p x p grid: each output cell is the mean of one window "
        "of the input. Window i covers rows floor(i x n / p) up to, but not including, ceil((i + 1) x n / p), and "
        "columns the same way. When p divides n the windows are n / p wide and do not overlap; otherwise some are "
        "one row wider and neighbours share a row. It keeps a rough layout (top-left, bottom-right, ...) while "
        "cutting the numbers the classifier has to weigh. Nothing is learnt."),
    "GlobalAveragePooling2D": (
        "Averages each channel over the whole map into one number: an n x n x c map becomes c numbers. Each says "
        "how strongly one pattern appears anywhere in the image, forgetting where. It is adaptive pooling to a "
        "1 x 1 grid. Nothing is learnt."),
    "Flatten": (
        "Lays the map's numbers out in one long row (height x width x channels numbers), because a Dense layer "
        "takes a list, not a grid. Nothing is computed and nothing is learnt."),
    "Dense": (
        "A fully connected layer: each output is a weighted sum of every input plus a bias. Here there is one "
        "output per class, and softmax turns the scores into probabilities that add up to 1; the prediction is "
        "the class with the highest. Its parameters are inputs x classes weights plus one bias per class."),
}

TERMS: dict[str, str] = {
    "label smoothing": (
        "Instead of training towards a target of 1 for the true class and 0 for the others, a share s of the "
        "target is spread evenly over all 10 classes: with s = 0.2 (the default) the true class's target becomes 0.82 and every "
        "other class's 0.02. The network is then never pushed to be 100 percent sure, which tends to make it "
        "generalise better and its probabilities more honest."),
    "augmentation": (
        "Each time a training image is used it is changed a little at random: flipped left-right half of the "
        f"time and shifted by up to {TrainConfig().shift} pixels in each direction (the edges mirrored to "
        "fill the gap). A cat is still a cat when flipped or moved, so the network learns that these changes do not "
        "matter instead of memorising the exact pixels of the training images. Validation images are never changed "
        "in training."),
    "mirror prediction (test-time augmentation)": (
        "With 'Predict with the mirror image too' on (the default network's setting, on Architecture), the trained "
        "network answers for an image and for its left-right mirror image and averages the two sets of "
        "probabilities. The training already taught it that a mirrored cat is a cat, so the two answers mostly "
        "agree, and where one view is unsure the other often is not: about one point of accuracy for twice the "
        "work per prediction. Classify, the saved model's validation accuracy and the command line all answer "
        "this way; the per-epoch validation curve shows one view."),
    "learning-rate schedule (warmup-cosine)": (
        "The learning rate is how big a step the optimiser takes. Warmup-cosine starts at a tenth of the chosen "
        "rate and rises in a straight line to it over the first tenth of the training steps (large steps on "
        "random starting weights can throw training off), then lowers it along half a cosine curve to 0 at the "
        "last step, so the final steps are small and settle the weights. 'constant' keeps one rate throughout."),
}

_WIDTHS = field_spec(ModelConfig, "widths")
BLOCKS_HELP = (
    f"how many blocks the network has ({_WIDTHS.min_len} to {_WIDTHS.max_len}); each block is a Conv2D (then a "
    "Conv2DTranspose, with block deconvs on), each followed by BatchNormalization and ReLU; the decoder's blocks "
    "come after them. More blocks see larger patterns and cost more; each block gets its own width slider below")


@dataclass(frozen=True)
class LayerNote:
    """One row of the Architecture table, in words: what this layer does to this network's numbers."""

    layer: str
    kind: str
    note: str


@dataclass(frozen=True)
class Explanation:
    """One layer type present in the network: what it is in general, and each of its rows here."""

    kind: str
    text: str
    rows: tuple[LayerNote, ...]


def conv_size(size_in: int, stride: int) -> int:
    """Conv2D output size with padding 'same'."""
    return math.ceil(size_in / stride)


def deconv_size(size_in: int, kernel: int, stride: int, padding: str = "same") -> int:
    """Conv2DTranspose output size: in x stride with padding 'same', (in - 1) x stride + kernel with 'valid'."""
    return size_in * stride if padding == "same" else (size_in - 1) * stride + kernel


def pool_windows(size_in: int, size_out: int) -> list[tuple[int, int]]:
    """Keras' AdaptiveAveragePooling2D windows along one axis: (first row, row after the last) of each output cell."""
    return [(i * size_in // size_out, -(-(i + 1) * size_in // size_out)) for i in range(size_out)]  # floor, ceil


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def _note(layer: LayerCost, before: tuple[int, ...], config: ModelConfig) -> str:
    """What `layer` does here, given the shape it receives."""
    kind, out = layer.kind, layer.output_shape
    if kind == "Rescaling":
        return f"{_shape(out)} pixels from 0-255 to 0-1 (divided by 255)"
    if kind == "Conv2D":
        k = config.deconv_kernel if layer.name.endswith("_deconv") else config.conv_kernel  # resize-then-convolve
        n, c_in, c_out = before[0], before[2], out[2]
        s = max(1, n // out[0])  # 1 for a block that max-pools afterwards and in the decoder
        size = (f"{n}x{n} → {out[0]}x{out[0]} because stride {s}: ceil({n} / {s}) = {conv_size(n, s)}" if s > 1
                else f"{n}x{n} → {out[0]}x{out[0]}: stride 1 and padding 'same' keep the size")
        return (f"{size}; {c_out} filters, each looking at a {k}x{k} window of all {c_in} input channels "
                f"({k} x {k} x {c_in} x {c_out} weights + {c_out} biases = {layer.params:,} parameters)")
    if kind == "BatchNormalization":
        c = out[-1]
        return (f"normalises each of the {c} channels of the {_shape(out)} map: {2 * c} learnt numbers (scale, "
                f"shift) and {2 * c} running averages, {layer.params:,} parameters in all")
    if kind == "ReLU":
        return f"sets the negative values of the {_shape(out)} map to 0"
    if kind == "Conv2DTranspose":
        n, k, s = before[0], config.deconv_kernel, max(1, out[0] // before[0])  # the decoder's: always 2
        valid = deconv_size(n, k, s, "valid")
        return (f"{n}x{n} → {out[0]}x{out[0]} because stride {s}: {n} x {s} = {deconv_size(n, k, s)} "
                f"(padding 'same'; with 'valid' it would be ({n} - 1) x {s} + {k} = {valid}); each input pixel "
                f"stamps a {k}x{k} kernel per output channel")
    if kind == "UpSampling2D":
        s = out[0] // before[0]
        return (f"{before[0]}x{before[0]} → {out[0]}x{out[0]}: each pixel repeated {s}x{s} times "
                f"({before[0]} x {s} = {out[0]}), for the Conv2D after it to smooth")
    if kind == "MaxPooling2D":
        return f"{before[0]}x{before[0]} → {out[0]}x{out[0]}: the largest of each 2x2 window, per channel"
    if kind == "Add":
        return f"{_shape(out)} upsampled map + the encoder's {_shape(out)} map of the same size, value by value"
    if kind == "AdaptiveAveragePooling2D":
        n, p = before[0], out[0]
        spans = ", ".join(f"{a}-{b - 1}" for a, b in pool_windows(n, p))
        sizes = sorted({b - a for a, b in pool_windows(n, p)})
        return (f"{n}x{n} → {p}x{p}: windows over rows (and columns) {spans}, each "
                f"{' or '.join(map(str, sizes))} wide, so each output cell averages a patch of the map")
    if kind == "GlobalAveragePooling2D":
        return f"{_shape(before)} → {out[0]}: the mean of each channel's {before[0] * before[1]} values"
    if kind == "Flatten":
        return f"{_shape(before)} → {out[0]:,} numbers in one row"
    if kind == "Dense":
        return (f"{before[0]:,} inputs x {NUM_CLASSES} classes + {NUM_CLASSES} biases = {layer.params:,} "
                f"parameters; softmax turns the {NUM_CLASSES} scores into probabilities")
    return ""


def notes(config: ModelConfig) -> list[LayerNote]:
    """One note per row of the Architecture table (`describe(config).layers`), in the same order."""
    out, before = [], (IMAGE_SIZE, IMAGE_SIZE, 3)
    for layer in describe(config).layers:
        out.append(LayerNote(layer.name, layer.kind, _note(layer, before, config)))
        before = layer.output_shape
    return out


def explain(config: ModelConfig) -> list[Explanation]:
    """Each layer type of this network, in the order it first appears, with its rows explained."""
    rows = notes(config)
    kinds = list(dict.fromkeys(r.kind for r in rows))
    return [Explanation(k, LAYERS[k], tuple(r for r in rows if r.kind == k)) for k in kinds]

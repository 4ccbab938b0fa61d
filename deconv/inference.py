"""The model's answers: class probabilities for batches of images, accuracy on labelled ones, top-k labels and how sure.

TensorFlow is imported by the functions that run the model, not by this module: the command line and the
pages read labels and predictions without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from deconv.config import CIFAR10_LABELS, IMAGE_SIZE, NUM_CLASSES

if TYPE_CHECKING:
    import keras

# When an answer is "unsure". The network has only its ten classes to answer with, so a picture of anything
# else still gets one of them; a low or contested top probability is the hint it gives. The rule reads the
# top two probabilities only, the numbers the page shows beside the answer (a Prediction may hold only its
# top k, so a normalised entropy over all ten classes is not always at hand, and a reader could not check it).
SURE_AT = 0.6  # a top class below this probability is unsure
SURE_RATIO = 2.0  # ... and so is one with less than this many times the runner-up's probability (torn between two)
UNSURE_RULE = (f"its top class has less than {SURE_AT:.0%}, or less than {SURE_RATIO:g} times the "
               "probability of the next one")

@dataclass(frozen=True)
class Prediction:
    """Top-k labels with probabilities for one image."""

    labels: list[str]
    probabilities: list[float]

    def as_json(self) -> list[dict[str, Any]]:
        """[{"label": NAME, "probability": P}, ...]."""
        return [{"label": lab, "probability": round(p, 6)} for lab, p in zip(self.labels, self.probabilities)]

    @property
    def confident(self) -> bool:
        """Whether the top answer passes UNSURE_RULE: at least SURE_AT, and SURE_RATIO times the runner-up."""
        top = self.probabilities[0] if self.probabilities else 0.0
        second = self.probabilities[1] if len(self.probabilities) > 1 else 0.0
        return top >= SURE_AT and top >= SURE_RATIO * second

    def confidence_note(self, maybe_other: bool = False) -> str:
        """Empty for a confident answer, else "unsure: ..."; maybe_other adds that the picture may show none of
        the classes (true of an upload, not of a CIFAR-10 test image)."""
        if self.confident:
            return ""
        return "unsure: the model is not confident" + ("; it may not be one of its ten classes" if maybe_other else "")


def top_k(probabilities: np.ndarray, label_names: list[str], k: int = 5) -> Prediction:
    """The k most probable labels of one probability vector."""
    order = np.argsort(probabilities)[::-1][:k]
    return Prediction([label_names[i] for i in order], [float(probabilities[i]) for i in order])


def label_names_of(meta: Any) -> list[str]:
    """The class names a run recorded (runs.RunMeta checks them: ten plain names), or the standard CIFAR-10 names."""
    names = list(getattr(meta, "label_names", ()))
    return names if len(names) == NUM_CLASSES else list(CIFAR10_LABELS)




def classify(model: Any, x: np.ndarray, label_names: list[str], k: int = 5, batch_size: int = 256) -> list[Prediction]:
    """Top-k predictions for a batch of uint8 images (N, 32, 32, 3), `batch_size` at a time (memory: cost.eval_batch)."""
    return [top_k(p, label_names, k) for p in predict(model, x, batch_size)]


def even_batch(n: int, most: int) -> int:
    """The largest batch size up to `most` that divides n (so evaluation has one batch shape), or `most`."""
    best = max((b for b in range(1, min(n, most) + 1) if n % b == 0), default=most)
    return best if best >= min(32, n, (most + 1) // 2) else most


def forward(model: keras.Model) -> Any:
    """The model's forward pass as one graph for every batch size, traced once per model and kept on it.

    Keras' own predict step is traced again for each new input structure and batch shape (4 traces per model
    here), and with the saved `jit_compile=True` XLA compiled it again for every new batch size (0.5-1.5 s each).
    A concrete function from `get_concrete_function` is traced once and is not counted by TensorFlow's
    retracing detector, which counts every model's predict step together and warned after a few models.
    """
    fn = getattr(model, "_forward", None)
    if fn is None:
        import tensorflow as tf

        from deconv.model import mirror_predicts

        def answers(images: Any) -> Any:
            """Probabilities, averaged with the mirror image's in one batch when the network predicts so."""
            if not mirror_predicts(model):
                return model(images, training=False)
            both = model(tf.concat([images, tf.reverse(images, axis=[2])], axis=0), training=False)
            return tf.reduce_mean(tf.reshape(both, (2, -1, NUM_CLASSES)), axis=0)

        any_batch = tf.TensorSpec((None, IMAGE_SIZE, IMAGE_SIZE, 3), tf.float32)
        fn = tf.function(answers, input_signature=[any_batch],
                         autograph=False).get_concrete_function()  # plain tensor code: no converted file in /tmp
        object.__setattr__(model, "_forward", fn)  # past Keras' attribute tracking: not a layer or a weight
    return fn


def predict(model: keras.Model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Class probabilities (N, 10) for uint8 images (N, 32, 32, 3)."""
    import tensorflow as tf

    from deconv.model import mirror_predicts

    fn = forward(model)
    x = np.asarray(x, dtype=np.float32)
    if not len(x):
        return np.zeros((0, NUM_CLASSES), np.float32)
    if mirror_predicts(model):  # each image goes through twice: half the images per call keeps the memory bound
        batch_size = max(1, batch_size // 2)
    return np.concatenate([fn(tf.constant(x[i:i + batch_size])).numpy() for i in range(0, len(x), batch_size)])


def evaluate(model: keras.Model, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> dict[str, float]:
    """Loss and accuracy on labelled uint8 images."""
    probs = predict(model, x, batch_size)
    picked = np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0)
    return {"loss": float(-np.log(picked).mean()), "accuracy": float((probs.argmax(1) == y).mean()), "n": int(len(y))}

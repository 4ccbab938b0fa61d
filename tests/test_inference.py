"""The model's answers: one traced forward pass for any batch size, top-k labels, when an answer is unsure; and how
the pages keep what they compute and compute the heavy part beside the page."""

from __future__ import annotations

import threading

import keras
import numpy as np

from deconv import computations, inference
from deconv.config import ModelConfig
from deconv.model import build_model


def test_top_k_is_sorted() -> None:
    probs = np.array([0.05, 0.5, 0.1, 0.0, 0.0, 0.2, 0.0, 0.15, 0.0, 0.0])
    pred = inference.top_k(probs, list("abcdefghij"), 3)
    assert pred.labels == ["b", "f", "h"] and pred.probabilities == [0.5, 0.2, 0.15]


def prediction(*top: float) -> inference.Prediction:
    """A Prediction whose probabilities start with top and share the rest evenly over ten classes."""
    rest = [(1 - sum(top)) / (10 - len(top))] * (10 - len(top))
    return inference.top_k(np.array([*top, *rest]), list("abcdefghij"), 10)


def test_a_flat_distribution_is_unsure_and_says_it_may_be_none_of_the_classes() -> None:
    flat = inference.top_k(np.full(10, 0.1), list("abcdefghij"), 10)
    assert not flat.confident
    assert flat.confidence_note() == "unsure: the model is not confident"
    assert flat.confidence_note(maybe_other=True).endswith("it may not be one of its ten classes")


def test_a_peaked_distribution_is_confident_and_has_no_note() -> None:
    peaked = prediction(0.9)
    assert peaked.confident and peaked.confidence_note(maybe_other=True) == ""


def test_the_confidence_boundary_is_sixty_percent_and_twice_the_runner_up() -> None:
    assert inference.SURE_AT == 0.6 and inference.SURE_RATIO == 2.0  # the numbers UNSURE_RULE shows in the app
    assert prediction(0.6, 0.3).confident  # exactly on both bounds
    assert not prediction(0.59, 0.05).confident  # below 60%, however far ahead
    assert not prediction(0.62, 0.32).confident  # torn between two: less than twice the runner-up
    assert prediction(0.62, 0.30).confident
    assert "60%" in inference.UNSURE_RULE and "2 times" in inference.UNSURE_RULE


def test_a_truncated_prediction_is_judged_by_what_it_holds() -> None:
    assert inference.Prediction(["a"], [0.7]).confident and not inference.Prediction([], []).confident


def test_predicting_any_batch_size_on_several_models_traces_once_each_and_warns_nothing(caplog) -> None:
    import logging

    models = [keras.models.clone_model(build_model(ModelConfig(widths=(8,)))) for _ in range(4)]
    x = np.random.default_rng(0).integers(0, 256, (300, 32, 32, 3), dtype=np.uint8)
    with caplog.at_level(logging.WARNING, logger="tensorflow"):
        for model in models:
            first = inference.forward(model)
            shapes = [inference.predict(model, x[:n], batch_size=256).shape for n in (1, 3, 8, 100, 300)]
            assert shapes == [(1, 10), (3, 10), (8, 10), (100, 10), (300, 10)] and inference.forward(model) is first
    assert not [r for r in caplog.records if "retracing" in r.getMessage()]
    assert np.allclose(inference.predict(models[0], x[:5]), models[0](x[:5].astype(np.float32)), atol=1e-6)


def test_a_network_that_predicts_with_the_mirror_image_averages_both_views_and_sees_no_left_or_right() -> None:
    mirrored = build_model(ModelConfig(widths=(8, 16)))
    one_view = build_model(ModelConfig(widths=(8, 16), mirror_predict=False))
    one_view.set_weights(mirrored.get_weights())
    x = np.random.default_rng(1).integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    both = inference.predict(mirrored, x, batch_size=3)  # halved to 1 image (2 views) a call: odd sizes too
    expected = (inference.predict(one_view, x) + inference.predict(one_view, x[:, :, ::-1])) / 2
    assert np.allclose(both, expected, atol=1e-6) and np.allclose(both.sum(1), 1, atol=1e-5)
    assert np.allclose(inference.predict(mirrored, x[:, :, ::-1]), both, atol=1e-6)  # a mirror image, the same answer
    assert not np.allclose(inference.predict(one_view, x), both, atol=1e-4)  # which one view alone does not give


def test_a_config_saved_before_mirror_prediction_existed_predicts_one_view_and_the_article_never_mirrors() -> None:
    from deconv.config import PRESETS

    old = ModelConfig().to_dict()
    del old["mirror_predict"]
    assert ModelConfig.from_dict(old).mirror_predict is False and ModelConfig().mirror_predict is True
    assert PRESETS["article"].mirror_predict is False


# What the pages compute (deconv.computations): kept per key, light work in the caller's thread, heavy in the worker.

def squares(calls: list[tuple[list[int], str]], keys: list[int]) -> computations.Compute:
    """A computation of each key's square, in chunks of two, that records each chunk and its thread."""
    def chunk(positions: list[int]) -> list[int]:
        calls.append((positions, threading.current_thread().name))
        return [keys[i] ** 2 for i in positions]
    return computations.in_chunks(chunk, 2)


def test_kept_values_are_not_computed_again_and_light_work_stays_in_the_callers_thread() -> None:
    kept, calls = computations.Computations(), []
    values, tasks = kept.get([1, 2, 3], squares(calls, [1, 2, 3]), heavy=False)
    assert values == [1, 4, 9] and not tasks
    assert calls == [([0, 1], threading.current_thread().name), ([2], threading.current_thread().name)]
    values, _ = kept.get([3, 4, 1], squares(calls, [3, 4, 1]), heavy=False)
    assert values == [9, 16, 1] and calls[2:] == [([1], threading.current_thread().name)]  # only the new key


def test_heavy_work_runs_in_the_worker_and_its_values_are_kept_as_they_come() -> None:
    kept, calls = computations.Computations(), []
    release = threading.Event()

    def slow(positions: list[int]) -> list[int]:
        release.wait(60)
        calls.append((positions, threading.current_thread().name))
        return [p * 10 for p in positions]

    values, tasks = kept.get(["a", "b", "c"], computations.in_chunks(slow, 1), heavy=True)
    assert values == [None, None, None] and len(tasks) == 1
    again, same = kept.get(["a", "b", "c"], computations.in_chunks(slow, 1), heavy=True)
    assert same == tasks and again == [None, None, None]  # asked again while it runs: no second task
    release.set()
    assert tasks[0].finished.wait(60)
    assert tasks[0].fraction == 1.0 and {name for _, name in calls} == {"deconv-computations"}
    assert kept.get(["a", "b", "c"], computations.in_chunks(slow, 1), heavy=True) == ([0, 10, 20], [])
    kept.close()


def test_a_task_nobody_asks_about_stops_and_an_error_is_kept_to_be_told() -> None:
    kept = computations.Computations(abandon_after=-1.0)  # abandoned as soon as it is queued
    values, tasks = kept.get(["x"], computations.alone(lambda progress: 1 / 0), heavy=True)
    assert tasks[0].finished.wait(60) and not tasks[0].started
    assert kept.get(["x"], computations.alone(lambda progress: 1), heavy=False)[0] == [1]  # nothing kept: computed now
    failing = computations.Computations()
    _, tasks = failing.get(["y"], computations.alone(lambda progress: 1 / 0), heavy=True)
    assert tasks[0].finished.wait(60)
    values, tasks = failing.get(["y"], computations.alone(lambda progress: 1), heavy=True)
    assert not tasks and isinstance(values[0], computations.Failed)  # said, not computed again
    assert isinstance(values[0].error, ZeroDivisionError)
    kept.close()
    failing.close()


def test_the_kept_values_are_bounded_by_their_bytes_least_recently_used_first() -> None:
    kept = computations.Computations(max_bytes=3 * 1000)
    arrays = computations.alone(lambda progress: np.zeros(1000, np.uint8))
    for key in "abc":
        kept.get([key], arrays, heavy=False)
    kept.get(["a"], arrays, heavy=False)  # used again: now the newest
    calls: list[str] = []
    kept.get(["d"], computations.alone(lambda progress: calls.append("d") or np.zeros(1000, np.uint8)), heavy=False)
    recount = computations.alone(lambda progress: calls.append("again") or np.zeros(1000, np.uint8))
    assert kept.get(["a"], recount, heavy=False)[0][0] is not None and calls == ["d"]
    kept.get(["b"], recount, heavy=False)
    assert calls == ["d", "again"]  # b was the least recently used: dropped
    assert computations.digest(np.zeros((2, 2), np.uint8)) != computations.digest(np.ones((2, 2), np.uint8))

"""N queued trainings on the local pool, then on a loopback Ray cluster of K worker CPUs: time until the last ends.

    DECONV_DATA_DIR=/work/shared/cifar10-subset/cifar-10-batches-py python bench/ray_scaling.py --jobs 4 --workers 2

Each side is a JobManager as the app holds it: the local pool with DECONV_MAX_JOBS slots (1 by default) and its warm
worker, given --settle seconds to import TensorFlow first as on a server that has been up a while; then
`ray start --head --num-cpus K` on loopback with one CPU per training (DECONV_RAY_CPUS=1), connected by its
ray:// address. N owners each submit one training of the default network at once. Prints each job's wait and run
times, the time until the last one finished on each side, and what a bigger cluster would give; writes
bench/ray_scaling_results.json. Needs `pip install -r requirements-ray.txt`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deconv import runs  # noqa: E402
from deconv.config import ModelConfig, TrainConfig  # noqa: E402
from deconv.jobs import JobManager, max_jobs_from_env  # noqa: E402
from deconv.samples import write_cifar  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "ray_scaling_results.json"


def phases(job: object, submitted: float) -> dict[str, object]:
    """When a job waited, started training, ended training and was done, from its own events."""
    started, ended = job.started or submitted, job.ended or time.time()
    begin, end = job.newest("start"), job.newest("end")
    trained = end["time"] if end and "run_dir" in end else ended  # a Ray job's end is stamped on its node
    return {"state": job.state, "wait": round(started - submitted, 1), "run": round(ended - started, 1),
            "startup": round((begin["time"] if begin else started) - started, 1),
            "training": round(trained - (begin["time"] if begin else started), 1),
            "back": round(ended - trained, 1), "message": job.message[:120]}


def run_side(name: str, manager: JobManager, n: int, model: ModelConfig, train: TrainConfig,
             timeout: float) -> dict[str, object]:
    """Submit n trainings from n owners at once; wait for all; their timings."""
    submitted = time.time()
    jobs = [manager.submit(f"owner-{i}", model, train, runs.new_run_dir(manager.jobs_dir.parent, model))
            for i in range(n)]
    while any(j.active for j in jobs) and time.time() - submitted < timeout:
        time.sleep(0.5)
    last = max((j.ended or time.time()) for j in jobs) - submitted
    rows = [phases(j, submitted) for j in jobs]
    print(f"\n{name}: {manager.max_jobs} at a time")
    for i, row in enumerate(rows):
        print(f"  job {i + 1}: {row['state']:9s} waited {row['wait']:6.1f} s, ran {row['run']:6.1f} s (start-up "
              f"{row['startup']:.1f} s, training and check {row['training']:.1f} s, wrap-up "
              f"{row['back']:.1f} s)")
    print(f"  the last one finished {last:.1f} s after the {n} were submitted")
    return {"slots": manager.max_jobs, "last_finished_s": round(last, 1), "jobs": rows}


def main() -> None:
    """Measure both sides and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=4, help="trainings submitted at once (N)")
    parser.add_argument("--workers", type=int, default=2, help="CPUs of the Ray cluster, one training each (K)")
    parser.add_argument("--train-size", type=int, default=1000)
    parser.add_argument("--val-size", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--settle", type=float, default=30.0, help="seconds the local warm worker gets to start")
    parser.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args()
    from deconv.ray_jobs import LocalCluster  # needs ray: pip install -r requirements-ray.txt

    tmp = Path(tempfile.mkdtemp(prefix="deconv-bench-"))
    if not os.environ.get("DECONV_DATA_DIR"):
        os.environ["DECONV_DATA_DIR"] = str(write_cifar(tmp / "data", train_per_class=args.train_size // 10,
                                                        test_per_class=args.val_size // 10))
    model, train = ModelConfig(), TrainConfig(train_size=args.train_size, val_size=args.val_size, epochs=args.epochs)
    print(f"{args.jobs} trainings of the default network ({args.train_size} images, {args.epochs} epochs) on "
          f"{os.cpu_count()} cores; data {os.environ['DECONV_DATA_DIR']}")

    local = JobManager(tmp / "local" / ".jobs", max_jobs=max_jobs_from_env(), backend="local")
    time.sleep(args.settle)
    try:
        local_side = run_side("local pool", local, args.jobs, model, train, args.timeout)
    finally:
        local.shutdown()

    os.environ["DECONV_RAY_CPUS"] = "1"
    with LocalCluster(args.workers, {"DECONV_DATA_DIR": os.environ["DECONV_DATA_DIR"],
                                     "TF_CPP_MIN_LOG_LEVEL": "2"}) as cluster:
        remote = JobManager(tmp / "ray" / ".jobs", backend=cluster.address)
        try:
            if remote.cluster is None:
                raise SystemExit(f"could not use the cluster: {remote.notice}")
            ray_side = run_side(f"Ray cluster of {args.workers} worker CPUs", remote, args.jobs, model, train,
                                args.timeout)
        finally:
            remote.shutdown()

    ratio = local_side["last_finished_s"] / ray_side["last_finished_s"]
    one_job = min(r["run"] for r in local_side["jobs"])  # one training with the whole machine
    mean = {k: sum(r[k] for r in ray_side["jobs"]) / len(ray_side["jobs"]) for k in ("run", "startup", "back")}
    per_job = one_job + mean["startup"] + mean["back"]  # with cores of its own, plus Ray's start and return
    print(f"\nlast training finished: local {local_side['last_finished_s']:.1f} s, Ray "
          f"{ray_side['last_finished_s']:.1f} s: Ray {ratio:.2f}x as fast")
    local_startup = sum(r["startup"] for r in local_side["jobs"]) / len(local_side["jobs"])
    print(f"Why, on these {os.cpu_count()} cores: Ray runs {args.workers} trainings at once, so one's single-threaded "
          f"phases (importing TensorFlow, loading data, compiling: {mean['startup']:.0f} s a job there, "
          f"{local_startup:.0f} s on the local pool, whose next worker starts only when a training ends and first "
          f"compiles the default network) overlap another's training; each training itself is no faster "
          f"({mean['run']:.0f} s a job on Ray against {one_job:.0f} s for the quickest local one), and a run "
          f"coming back is checked in a process of its own ({mean['back']:.0f} s). On a machine shared with other "
          "work, two processes also get a larger share of it than one.")
    projections = []
    for nodes in (1, 4, 8):
        slots = nodes * 8 // 2
        rounds = math.ceil(30 / slots)
        projections.append({"nodes": nodes, "slots": slots, "minutes": round(rounds * per_job / 60, 1)})
        print(f"A class of 30 on {nodes} node{'s' if nodes > 1 else ''} of 8 cores, 2 CPUs a training ({slots} at "
              f"once): {rounds} round{'s' if rounds > 1 else ''} of about {per_job:.0f} s, so about "
              f"{rounds * per_job / 60:.1f} min until the last ends (one after another on one machine: about "
              f"{30 * one_job / 60:.0f} min).")
    RESULTS.write_text(json.dumps({"jobs": args.jobs, "workers": args.workers, "cores": os.cpu_count(),
                                   "train": train.to_dict(), "local": local_side, "ray": ray_side,
                                   "local_over_ray": round(ratio, 2),
                                   "class_of_30_projection": projections}, indent=2) + "\n")
    print(f"\nfigures in {RESULTS}")


if __name__ == "__main__":
    main()

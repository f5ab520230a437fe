"""The driver of a training run (`fit`): it settles the run's scaling and batch, lists the
data once, has a teacher label it where the run has one, runs the workers' loop under Ray
Train, and writes the artifact with its identities and class centres."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import ray
import ray.train
import torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from ray.util.queue import Empty, Queue
from safetensors.torch import save as save_safetensors

from models.artifact import load_artifact, save_artifact
from models.presets import get_preset
from pipeline import faults, teacher
from pipeline.augment import UTILITY_PRESERVING
from pipeline.cluster import connect
from pipeline.storage import StorageOptions, arrow_filesystem, filesystem, parse_uri
from pipeline.training.data import DataSpec, labelled, summarise
from pipeline.training.loop import (
    STATE_FILE,
    build_model,
    centres_file,
    read_checkpoint_file,
    train_loop,
)
from pipeline.training.spec import DEGRADE, TrainingError, TrainSpec

log = logging.getLogger(__name__)

IDENTITIES_FILE = "identities.json"
CENTRES_FILE = "centres.safetensors"  # beside the artifact, for fine-tuning; scoring needs none
TEACHER_DIR = "teacher"  # in the run's folder: the teacher's descriptors and labels
# Rank 0's wait before it dies at the fault hook, so the controller registers its reports.
FAULT_DELAY_S = 5.0


@dataclass
class TrainResult:
    model_id: str
    out: str
    run_path: str
    summary: dict


def run_config(spec: TrainSpec, storage: StorageOptions | None) -> RunConfig:
    location = parse_uri(spec.storage_path)
    storage_fs = None
    if location.protocol != "file":
        storage_fs, _ = arrow_filesystem(spec.storage_path, storage)
    return RunConfig(
        name=spec.run_name,
        storage_path=location.path,
        storage_filesystem=storage_fs,
        failure_config=FailureConfig(max_failures=spec.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=spec.keep_checkpoints),
    )


def scaled(spec: TrainSpec, resources: dict[str, float]) -> TrainSpec:
    """`spec` with its automatic scaling settled for a cluster of `resources`: one worker per
    GPU, each with one GPU, when there are GPUs; else one CPU worker."""
    gpus = resources.get("GPU", 0)
    per_worker = spec.gpus
    if per_worker == "auto":
        per_worker = 1.0 if gpus >= 1 else 0.0
    workers = spec.num_workers
    if workers == "auto":
        workers = max(1, int(gpus // per_worker)) if per_worker else 1
    if spec.batch_size % workers:
        raise TrainingError(
            f"batch_size {spec.batch_size} is not divisible by {workers} workers: "
            "give --batch-size or --num-workers"
        )
    return spec.model_copy(update={"num_workers": workers, "gpus": float(per_worker)})


def fitted_batch(spec: TrainSpec, train_rows: int) -> TrainSpec:
    """`spec` with a global batch no larger than the `train_rows` training images (rounded
    down to a multiple of the workers), said once as a warning."""
    if not spec.num_workers <= train_rows < spec.batch_size:
        return spec
    batch = train_rows - train_rows % spec.num_workers
    log.warning(
        "the global batch of %d is larger than the %d training images: training with "
        "batches of %d (--batch-size sets it)",
        spec.batch_size,
        train_rows,
        batch,
    )
    return spec.model_copy(update={"batch_size": batch})


@contextlib.contextmanager
def relayed(queue: Queue, say: Callable[[str], None]) -> Iterator[None]:
    """Hands the lines rank 0 puts on `queue` to `say` while the run lasts: the workers'
    one channel to the terminal (Ray's relay of their output is off under a command log)."""
    done = threading.Event()

    def pump() -> None:
        while not (done.is_set() and queue.empty()):
            with contextlib.suppress(Empty):
                say(queue.get(timeout=0.5))

    thread = threading.Thread(target=pump, name="training-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        queue.shutdown()


def fit(
    spec: TrainSpec, storage: StorageOptions | None = None, say: Callable[[str], None] = print
) -> TrainResult:
    """Run (or resume) training and write the artifact to `spec.out`; `storage` reaches
    the data, the run's state and the artifact. `say` gets the run's name, one line per epoch
    (and one on resuming, and the teacher's progress)."""
    started = time.time()
    check_init(spec, storage)
    degrade = fresh_degrade(spec)
    name = spec.run_name or time.strftime("fiqa-train-%Y%m%d-%H%M%S")
    spec = spec.model_copy(update={"run_name": name})
    say(f"run {name} (rerun with --run-name {name} to resume)")
    connect()
    spec = scaled(spec, ray.cluster_resources())
    train = DataSpec(spec.format, tuple(spec.data), storage, spec.format_options)
    train_ds = train.read(shuffle_seed=spec.seed)
    data = summarise(train_ds, spec.holdout_fraction)
    if not data.identities:
        raise TrainingError(f"{', '.join(spec.data)}: no readable labelled images")
    classes = {identity: i for i, identity in enumerate(data.identities)}
    plan = teacher_plan(spec, train, storage, classes)
    rows_per_image = 1 + (plan.copies if plan else 0)
    train_rows = data.train_rows * rows_per_image
    spec = fitted_batch(spec, train_rows)
    steps_per_epoch = (train_rows // spec.num_workers) // (spec.batch_size // spec.num_workers)
    if steps_per_epoch == 0:
        raise TrainingError(
            f"{train_rows} training images are fewer than one global batch of "
            f"{spec.batch_size}: lower --batch-size"
        )
    if len(data.identities) < spec.num_workers:
        raise TrainingError(
            f"{len(data.identities)} identities cannot be split over {spec.num_workers} "
            "workers (each holds a slice of the class centres): lower --num-workers"
        )
    log.info(
        "%d identities, %d training and %d held-out images, %d steps per epoch, skipped %s",
        len(classes),
        data.train_rows,
        data.holdout_rows,
        steps_per_epoch,
        data.skipped or "none",
    )
    if plan:
        shards = [(uri, shard) for uri, listed in train.shards() for shard in listed]
        try:
            labelled_rows = teacher.label(plan, shards, say)
        except teacher.TeacherError as e:
            raise TrainingError(str(e)) from e
        say(f"teacher {plan.teacher.label}: CR of {labelled_rows} images and copies")
    datasets = {"train": labelled(train_ds, classes, False, spec.holdout_fraction, degrade, plan)}
    if data.holdout_rows:
        datasets["holdout"] = labelled(train_ds, classes, True, spec.holdout_fraction, plan=plan)
    eval_identities: list[str] = []
    if spec.eval_data:
        eval_ds = DataSpec(spec.eval_format or spec.format, (spec.eval_data,), storage).read()
        eval_identities = summarise(eval_ds, 0.0).identities
        eval_classes = {identity: i for i, identity in enumerate(eval_identities)}
        datasets["eval"] = labelled(eval_ds, eval_classes, None, 0.0)

    progress = Queue(actor_options={"num_cpus": 0})  # rank 0's lines for the terminal
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "spec": spec,
            "steps_per_epoch": steps_per_epoch,
            "num_classes": len(classes),
            "storage": storage,
            "fault": faults.exit_once(faults.TRAIN_STEP, FAULT_DELAY_S),
            "evaluate": sorted(set(datasets) - {"train"}),
            "progress": progress,
        },
        scaling_config=ScalingConfig(
            num_workers=spec.num_workers,
            use_gpu=bool(spec.gpus),
            resources_per_worker={
                "CPU": spec.cpus_per_worker,
                **({"GPU": spec.gpus} if spec.gpus else {}),
            },
        ),
        torch_config=TorchConfig(backend="nccl" if spec.gpus else "gloo"),
        run_config=run_config(spec, storage),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=["train", "holdout"]),
    )
    try:
        with relayed(progress, say):
            result = trainer.fit()
    except ray.train.TrainingFailedError as e:
        raise TrainingError(
            f"training run {spec.run_name} failed (rerun with the same run name to resume "
            f"from its last checkpoint): {e}"
        ) from e
    state = read_checkpoint_file(result.checkpoint, STATE_FILE)
    model = build_model(spec, storage)
    model.load_state_dict(state["model"])
    summary = {
        "trained": {
            # As run: the defaults resolved (storage options are not in the spec).
            "spec": {
                **spec.model_dump(mode="json"),
                "augment": list(spec.augmentations),
                "degrade": degrade,
            },
            "classes": len(classes),
            "identities_file": IDENTITIES_FILE,
            "centres_file": CENTRES_FILE,
            "train_images": data.train_rows,
            "teacher_rows_per_image": rows_per_image if plan else None,
            "holdout_images": data.holdout_rows,
            "skipped_at_read": data.skipped,
            "eval_identities": len(eval_identities),
            "steps": state["step"],
            "steps_per_epoch": steps_per_epoch,
            "resumed_from_steps": state["resumed"],
            "epochs": state["history"],
            "wall_seconds": time.time() - started,
            "run_path": result.path,
        }
    }
    fs, out = filesystem(spec.out, storage)
    model_id = save_artifact(model.eval(), out, preset=spec.preset, training=summary, fs=fs)
    with fs.open(f"{out.rstrip('/')}/{IDENTITIES_FILE}", "wb") as f:
        f.write(json.dumps(data.identities).encode())
    centres = [
        read_checkpoint_file(result.checkpoint, centres_file(r))["weight"]
        for r in range(state["workers"])
    ]
    with fs.open(f"{out.rstrip('/')}/{CENTRES_FILE}", "wb") as f:
        f.write(save_safetensors({"weight": torch.cat(centres).contiguous()}))
    return TrainResult(model_id, parse_uri(spec.out).uri, result.path, summary)


def fresh_degrade(spec: TrainSpec) -> float:
    """The run's `degrade`. A teacher's CR holds only for the pixels it measured: its own
    degraded copies, augmented at most by what leaves FR utility as it was."""
    if spec.teacher is None:
        return DEGRADE if spec.degrade is None else spec.degrade
    if spec.degrade:
        raise TrainingError(
            "fresh degradations have no teacher CR: with a teacher, its degraded copies "
            "(teacher_copies) replace them; leave degrade unset or 0"
        )
    changing = [a for a in spec.augmentations if a not in UTILITY_PRESERVING]
    if changing:
        raise TrainingError(
            f"augmentation {', '.join(changing)} changes what the teacher measured: with a "
            f"teacher use only {', '.join(UTILITY_PRESERVING)}"
        )
    return 0.0


def teacher_plan(
    spec: TrainSpec, train: DataSpec, storage: StorageOptions | None, classes: dict[str, int]
) -> teacher.Plan | None:
    """Where and how the run's teacher labels its training images (None: no teacher)."""
    if spec.teacher is None:
        return None
    root = f"{spec.storage_path.rstrip('/')}/{spec.run_name}/{TEACHER_DIR}"
    return teacher.Plan(
        teacher=spec.teacher,
        format=train.format,
        format_options=train.format_options,
        data_storage=storage,
        storage=storage,
        classes=classes,
        copies=spec.teacher_copies,
        seed=spec.seed,
        root=root,
        gpus=1.0 if spec.gpus and spec.teacher.resolved_kind == "artifact" else 0.0,
    )


def check_init(spec: TrainSpec, storage: StorageOptions | None) -> None:
    """An initial artifact must have the architecture the run asks for."""
    if not spec.init_from:
        return
    fs, path = filesystem(spec.init_from, storage)
    artifact = load_artifact(path, fs=fs)
    if artifact.model.config != get_preset(spec.preset, mode=spec.mode):
        raise TrainingError(
            f"init_from {spec.init_from}: its architecture ({artifact.preset}, "
            f"{artifact.model.config.mode} mode) is not {spec.preset} in {spec.mode} mode"
        )

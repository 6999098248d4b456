"""Trainer's run_fn: transfer learning of ResNet50 on the transformed images.

Training runs in up to two phases. Phase 1 ("head") trains only the new head
on a frozen base model. Phase 2 ("fine_tune") unfreezes the top of the base
and continues at a lower learning rate. From random initialisation phase 1 is
skipped. Each phase stops early on the loss of the `eval` split; the `test`
split never reaches this file.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import shutil
import tempfile
import time
from typing import Any

import keras
import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from tfx import v1 as tfx
from tfx_bsl.public import tfxio

from components import distributed_loop, exporter, model, transform
from pipeline.config import (
    BASE_WEIGHTS_BLESSED,
    BASE_WEIGHTS_IMAGENET,
    BASE_WEIGHTS_NONE,
    OPTIMIZER_SGD,
    STRATEGY_DEFAULT,
    STRATEGY_MIRRORED,
    STRATEGY_MULTI_WORKER,
    TrainingConfig,
)

logger = logging.getLogger(__name__)

HISTORY_FILE = "history.json"


def run_fn(fn_args: tfx.components.FnArgs) -> None:
    """Train, export and verify the classifier (called by TFX's Trainer)."""
    logging.getLogger().setLevel(logging.INFO)
    custom_config = fn_args.custom_config or {}
    config = TrainingConfig.from_custom_config(custom_config.get("training", {}))
    label_names = tuple(custom_config["label_names"])
    keras.utils.set_random_seed(config.seed)
    tft_output = tft.TFTransformOutput(fn_args.transform_output)
    strategy = make_strategy(config.distribution_strategy)
    chief = is_chief(strategy)

    # Data: raw examples, transformed on the fly by the Transform graph.
    train_count = count_examples(fn_args.train_files)
    eval_count = count_examples(fn_args.eval_files)
    logger.info("Training on %d examples, early stopping on %d.", train_count, eval_count)
    train_steps = config.steps_per_epoch or math.ceil(train_count / config.batch_size)
    eval_steps = config.eval_steps or math.ceil(eval_count / config.batch_size)
    num_classes = len(label_names)
    train_dataset = make_dataset(
        fn_args.train_files, fn_args.data_accessor, tft_output, config, num_classes, training=True
    )
    eval_dataset = make_dataset(
        fn_args.eval_files, fn_args.data_accessor, tft_output, config, num_classes, training=False
    )

    # Model and base weights, created under the strategy so variables are replicated.
    with strategy.scope():
        classifier, base = model.build_model(
            num_classes, config.image_size, config.dropout, config.fused_batch_norm
        )
        pretrained = load_base_weights(classifier, base, config, fn_args.base_model)

    # Training phases.
    phases = []
    if pretrained and config.head_epochs > 0:
        phases.append(("head", config.head_epochs, config.learning_rate, False))
    elif config.head_epochs > 0:
        logger.info("Skipping the head phase: a randomly initialised base has nothing to keep.")
    if config.fine_tune_epochs > 0:
        rate = config.fine_tune_learning_rate if pretrained else config.learning_rate
        phases.append(("fine_tune", config.fine_tune_epochs, rate, True))
    if not phases:
        raise ValueError(
            "No training phase to run: from random initialisation (base_weights='none') "
            "set fine_tune_epochs to at least 1."
        )

    # Backups of finished epochs live outside this execution's folders, under a
    # key of the inputs and configuration, so the execution that reruns an
    # interrupted one finds them.
    backup_dir = backup_folder(fn_args, config, label_names, custom_config.get("backup_root"))
    history: dict[str, Any] = {}
    for name, epochs, rate, unfreeze in phases:
        if unfreeze:
            trainable = model.set_trainable_layers(base, config.fine_tune_layers, pretrained)
            logger.info("Phase %s: %d base layers trainable.", name, trainable)
        else:
            base.trainable = False
        finished = load_finished_phase(classifier, backup_dir, name)
        if finished is not None:
            history[name] = finished
            continue
        history[name] = train_phase(
            classifier,
            name,
            epochs,
            rate,
            train_steps,
            eval_steps,
            train_dataset,
            eval_dataset,
            config,
            fn_args.model_run_dir,
            backup_dir,
            strategy,
            chief,
        )
        if chief:
            save_finished_phase(classifier, backup_dir, name, history[name])

    # Every worker of a multi-worker strategy takes part in saving, but only
    # the chief's export is kept.
    if not chief:
        scratch = tempfile.mkdtemp(prefix="worker-export-")
        try:
            exporter.export_serving_model(classifier, base, tft_output, label_names, scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        logger.info("Worker finished; the chief writes the model and its history.")
        return
    write_json(os.path.join(fn_args.model_run_dir, HISTORY_FILE), history)

    # Export, then prove every signature answers on a real example.
    exporter.export_serving_model(
        classifier, base, tft_output, label_names, fn_args.serving_model_dir
    )
    # TF Serving replays these requests, on the first images of `eval`, at load time.
    warmup_records = _record_dataset(_expand_files(fn_args.eval_files)).take(
        exporter.WARMUP_BATCH_SIZE
    )
    exporter.write_warmup_requests(
        fn_args.serving_model_dir,
        exporter.image_bytes_from_examples([record.numpy() for record in warmup_records]),
    )
    example = first_serialized_example(fn_args.eval_files)
    outputs = exporter.verify_signatures(fn_args.serving_model_dir, example, num_classes)
    logger.info(
        "Verified signatures %s on a real eval example (predicted %s).",
        ", ".join(sorted(outputs)),
        outputs[exporter.SERVING_SIGNATURE]["class_name"][0].decode(),
    )
    # The model is exported: the backups have served their purpose.
    if tf.io.gfile.exists(backup_dir):
        tf.io.gfile.rmtree(backup_dir)


def load_base_weights(
    classifier: keras.Model, base: keras.Model, config: TrainingConfig, base_model_dir: str | None
) -> bool:
    """Fill the base model's weights as configured; return whether they are pre-trained."""
    choice = config.base_weights
    if choice == BASE_WEIGHTS_NONE:
        if config.zero_init_residual:
            count = model.zero_init_residual_branches(base)
            logger.info("Base weights: random initialisation, %d residual branches at 0.", count)
        else:
            logger.info("Base weights: random initialisation.")
        return False
    if choice == BASE_WEIGHTS_IMAGENET:
        path = model.fetch_imagenet_weights(url=config.imagenet_weights_url)
        model.load_weights_file(base, path)
        logger.info("Base weights: ImageNet, from %s.", path)
        return True
    if choice == BASE_WEIGHTS_BLESSED:
        if not base_model_dir:
            raise model.BaseWeightsError(
                "base_weights='blessed' but this pipeline has no blessed model yet. Run it "
                "once with --base-weights imagenet, none or a weights file first."
            )
        logger.info(
            "Base weights: %s.", model.load_blessed_weights(classifier, base, base_model_dir)
        )
        return True
    model.load_weights_file(base, choice)
    logger.info("Base weights: file %s.", choice)
    return True


def train_phase(
    classifier: keras.Model,
    name: str,
    epochs: int,
    peak_rate: float,
    train_steps: int,
    eval_steps: int,
    train_dataset: tf.data.Dataset,
    eval_dataset: tf.data.Dataset,
    config: TrainingConfig,
    model_run_dir: str,
    backup_dir: str,
    strategy: tf.distribute.Strategy,
    chief: bool = True,
) -> dict[str, list[float]]:
    """Compile and fit one phase; return its per-epoch metrics.

    Only the chief writes TensorBoard logs and checkpoints.
    """
    total_steps = max(1, epochs * train_steps)
    warmup_steps = min(total_steps - 1, int(config.warmup_epochs * train_steps))
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=peak_rate / 100 if warmup_steps else peak_rate,
        decay_steps=max(1, total_steps - warmup_steps),
        warmup_target=peak_rate if warmup_steps else None,
        warmup_steps=warmup_steps,
    )
    with strategy.scope():
        classifier.compile(
            optimizer=make_optimizer(config, schedule),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
            metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        )
    epoch_logger = EpochLogger(name, config.batch_size, train_steps)
    callbacks: list[keras.callbacks.Callback] = [
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=config.early_stopping_patience, restore_best_weights=True
        ),
        epoch_logger,
    ]
    backup = EpochBackup(os.path.join(backup_dir, name), epoch_logger)
    if chief:
        callbacks += chief_callbacks(name, model_run_dir) + [backup]
    logger.info(
        "Phase %s: %d epochs of %d steps, batch %d, peak learning rate %g.",
        name,
        epochs,
        train_steps,
        config.batch_size,
        peak_rate,
    )
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        # Keras' fit() fails under this strategy (see distributed_loop.py); the
        # loop there logs epochs but writes no TensorBoard logs or checkpoints.
        history = distributed_loop.fit_multi_worker(
            classifier,
            strategy,
            train_dataset,
            eval_dataset,
            epochs,
            train_steps,
            eval_steps,
            config.batch_size,
            config.early_stopping_patience,
            [epoch_logger],
        )
    else:
        result = classifier.fit(
            train_dataset,
            epochs=epochs,
            steps_per_epoch=train_steps,
            validation_data=eval_dataset,
            validation_steps=eval_steps,
            callbacks=callbacks,
            verbose=0,
        )
        history = {key: [float(v) for v in values] for key, values in result.history.items()}
    history["images_per_second"] = epoch_logger.images_per_second
    # Epochs restored from a backup come first.
    return {key: backup.restored_history.get(key, []) + values for key, values in history.items()}


def make_optimizer(
    config: TrainingConfig, schedule: keras.optimizers.schedules.LearningRateSchedule
) -> keras.optimizers.Optimizer:
    """Build the optimizer TrainingConfig.optimizer names: Adam, or SGD with Nesterov momentum."""
    # Keras 3 applies weight_decay decoupled from the gradient (AdamW's rule);
    # None keeps the decay step out of the graph.
    weight_decay = config.weight_decay or None
    if config.optimizer == OPTIMIZER_SGD:
        return keras.optimizers.SGD(
            learning_rate=schedule,
            momentum=config.momentum,
            nesterov=True,
            weight_decay=weight_decay,
        )
    return keras.optimizers.Adam(learning_rate=schedule, weight_decay=weight_decay)


def chief_callbacks(phase: str, model_run_dir: str) -> list[keras.callbacks.Callback]:
    """TensorBoard logs and the phase's best weights (lowest `eval` loss) in this execution.

    One file per phase, rewritten when the loss improves: ResNet50's weights
    take about 94 MB, so a file per epoch would grow with every epoch.
    """
    return [
        keras.callbacks.TensorBoard(log_dir=os.path.join(model_run_dir, "logs", phase)),
        keras.callbacks.ModelCheckpoint(
            os.path.join(model_run_dir, "checkpoints", phase + "-best.weights.h5"),
            monitor="val_loss",
            save_best_only=True,
            save_weights_only=True,
        ),
    ]


def backup_folder(
    fn_args: tfx.components.FnArgs,
    config: TrainingConfig,
    label_names: tuple[str, ...],
    backup_root: str | None,
) -> str:
    """Folder of this training's epoch backups.

    Under `backup_root` (set by the pipeline) the folder is named after a
    digest of everything that decides the training: example files, Transform
    graph, base model, configuration and classes. A rerun of an interrupted
    execution has the same inputs, so it finds the backups; any change starts
    afresh. Without a root the backups stay in this execution's folder.
    """
    if not backup_root:
        return os.path.join(fn_args.model_run_dir, "backup")
    key = {
        "train_files": sorted(fn_args.train_files),
        "eval_files": sorted(fn_args.eval_files),
        "transform_output": fn_args.transform_output,
        "base_model": fn_args.base_model or "",
        "training": config.to_custom_config(),
        "label_names": list(label_names),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(backup_root, digest)


class EpochBackup(keras.callbacks.Callback):
    """Backs up each finished epoch of a phase and resumes from the last one.

    Like keras.callbacks.BackupAndRestore, which writes its weights and epoch
    number in place, one after the other: a process killed between or during
    those writes leaves a backup that fails to load or names the wrong epoch.
    Here each epoch goes to a hidden folder that is renamed into place once
    complete, with the optimizer's state (so the learning-rate schedule goes
    on where it stopped) and the epochs' metrics. Early stopping's count of
    epochs without improvement starts again on resume.
    """

    WEIGHTS_FILE = "model.weights.h5"
    STATE_FILE = "state.json"

    def __init__(self, folder: str, epoch_logger: EpochLogger):
        super().__init__()
        self.folder = folder
        self._epoch_logger = epoch_logger
        self._history: dict[str, list[float]] = {}
        # Metrics of the epochs restored from a backup, keyed like Keras' History.
        self.restored_history: dict[str, list[float]] = {}

    def on_train_begin(self, logs: dict | None = None) -> None:
        latest = self._latest_backup()
        if latest is None:
            return
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            # The optimizer's variables must exist before its state is loaded.
            optimizer.build(self.model.trainable_variables)
        self.model.load_weights(os.path.join(latest, self.WEIGHTS_FILE))
        with tf.io.gfile.GFile(os.path.join(latest, self.STATE_FILE)) as handle:
            state = json.load(handle)
        # fit() reads _initial_epoch, as it does for Keras' BackupAndRestore.
        self.model._initial_epoch = state["epoch"]
        self.restored_history = state["history"]
        self._history = {key: list(values) for key, values in state["history"].items()}
        logger.info("Resuming after epoch %d from the backup in %s.", state["epoch"], latest)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        for key, value in (logs or {}).items():
            self._history.setdefault(key, []).append(float(value))
        speeds = self._epoch_logger.images_per_second
        if speeds:
            self._history.setdefault("images_per_second", []).append(speeds[-1])
        staging = os.path.join(self.folder, f".epoch-{epoch + 1:04d}.tmp")
        if tf.io.gfile.exists(staging):
            tf.io.gfile.rmtree(staging)
        tf.io.gfile.makedirs(staging)
        self.model.save_weights(os.path.join(staging, self.WEIGHTS_FILE))
        write_json(
            os.path.join(staging, self.STATE_FILE),
            {"epoch": epoch + 1, "history": self._history},
        )
        tf.io.gfile.rename(staging, os.path.join(self.folder, f"epoch-{epoch + 1:04d}"))
        for older in self._complete_backups()[:-1]:
            tf.io.gfile.rmtree(older)

    def _complete_backups(self) -> list[str]:
        if not tf.io.gfile.isdir(self.folder):
            return []
        names = sorted(name.rstrip("/") for name in tf.io.gfile.listdir(self.folder))
        return [os.path.join(self.folder, name) for name in names if name.startswith("epoch-")]

    def _latest_backup(self) -> str | None:
        backups = self._complete_backups()
        return backups[-1] if backups else None


def save_finished_phase(
    classifier: keras.Model, backup_dir: str, phase: str, history: dict[str, list[float]]
) -> None:
    """Keep a finished phase's weights and metrics, so a rerun skips the phase."""
    staging = os.path.join(backup_dir, f".{phase}-finished.tmp")
    if tf.io.gfile.exists(staging):
        tf.io.gfile.rmtree(staging)
    tf.io.gfile.makedirs(staging)
    # np.savez seeks in its file, which GFile's write mode does not allow.
    buffer = io.BytesIO()
    np.savez(buffer, *classifier.get_weights())
    with tf.io.gfile.GFile(os.path.join(staging, "weights.npz"), "wb") as handle:
        handle.write(buffer.getvalue())
    write_json(os.path.join(staging, HISTORY_FILE), history)
    tf.io.gfile.rename(staging, os.path.join(backup_dir, f"{phase}-finished"))
    # The epoch backups of this phase are superseded.
    epochs = os.path.join(backup_dir, phase)
    if tf.io.gfile.exists(epochs):
        tf.io.gfile.rmtree(epochs)


def load_finished_phase(
    classifier: keras.Model, backup_dir: str, phase: str
) -> dict[str, list[float]] | None:
    """Restore a phase an interrupted execution finished; return its metrics, or None."""
    folder = os.path.join(backup_dir, f"{phase}-finished")
    if not tf.io.gfile.exists(folder):
        return None
    with tf.io.gfile.GFile(os.path.join(folder, "weights.npz"), "rb") as handle:
        arrays = np.load(io.BytesIO(handle.read()))
        classifier.set_weights([arrays[f"arr_{index}"] for index in range(len(arrays.files))])
    with tf.io.gfile.GFile(os.path.join(folder, HISTORY_FILE)) as handle:
        history = json.load(handle)
    logger.info("Phase %s finished in an earlier execution; restored from %s.", phase, folder)
    return history


def make_strategy(name: str) -> tf.distribute.Strategy:
    """Return the tf.distribute strategy named in TrainingConfig.distribution_strategy.

    "multi_worker_mirrored" reads the cluster from the TF_CONFIG environment
    variable, as every worker process of the job must.
    """
    if name == STRATEGY_DEFAULT:
        return tf.distribute.get_strategy()
    if name == STRATEGY_MIRRORED:
        return tf.distribute.MirroredStrategy()
    if name == STRATEGY_MULTI_WORKER:
        if "TF_CONFIG" not in os.environ:
            raise ValueError(
                "distribution_strategy='multi_worker_mirrored' needs TF_CONFIG describing the "
                "cluster and this worker's task; set it or use 'default'."
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"Unknown distribution_strategy {name!r}.")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Return whether this process writes outputs: the chief, or worker 0 without a chief."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


class EpochLogger(keras.callbacks.Callback):
    """Logs progress within each epoch and its metrics, with images per second."""

    def __init__(self, phase: str, batch_size: int, steps: int, interval_seconds: float = 30.0):
        super().__init__()
        self._phase = phase
        self._batch_size = batch_size
        self._steps = steps
        self._interval = interval_seconds
        self._started = 0.0
        self._last_log = 0.0
        self._last_batch_end = 0.0
        self._epoch = 0
        # Training images per second of each epoch, validation excluded.
        self.images_per_second: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch = epoch + 1
        self._started = self._last_log = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        now = self._last_batch_end = time.perf_counter()
        if now - self._last_log < self._interval:
            return
        self._last_log = now
        logger.info(
            "Phase %s epoch %d: step %d of %d, loss %.4f, %.1f images/s.",
            self._phase,
            self._epoch,
            batch + 1,
            self._steps,
            (logs or {}).get("loss", float("nan")),
            (batch + 1) * self._batch_size / (now - self._started),
        )

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        seconds = time.perf_counter() - self._started
        training_seconds = max(self._last_batch_end - self._started, 1e-9)
        self.images_per_second.append(self._steps * self._batch_size / training_seconds)
        metrics = ", ".join(f"{key} {value:.4f}" for key, value in sorted((logs or {}).items()))
        logger.info(
            "Phase %s epoch %d done in %.1f s (training %.1f images/s): %s.",
            self._phase,
            epoch + 1,
            seconds,
            self.images_per_second[-1],
            metrics,
        )


def make_dataset(
    file_patterns: list[str],
    data_accessor: Any,
    tft_output: tft.TFTransformOutput,
    config: TrainingConfig,
    num_classes: int,
    training: bool,
) -> tf.data.Dataset:
    """Batches of (normalised image, one-hot label) from raw tf.Example files.

    The training dataset repeats forever (Keras bounds each epoch by
    steps_per_epoch); the eval dataset repeats too, bounded by validation_steps.
    """
    dataset = data_accessor.tf_dataset_factory(
        file_patterns,
        tfxio.TensorFlowDatasetOptions(
            batch_size=config.batch_size,
            shuffle=training,
            shuffle_buffer_size=config.shuffle_buffer,
            shuffle_seed=config.seed,
            num_epochs=None,
        ),
        tft_output.raw_metadata.schema,
    )

    def to_model_inputs(raw_features: dict[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
        transformed = tft_output.transform_raw_features(raw_features, drop_unused_features=True)
        labels = tf.one_hot(transformed[transform.TRANSFORMED_LABEL_KEY], num_classes)
        return transformed[transform.TRANSFORMED_IMAGE_KEY], labels

    dataset = dataset.map(to_model_inputs, num_parallel_calls=tf.data.AUTOTUNE)
    # Under a multi-worker strategy each worker takes every n-th batch, which
    # works with any number of input files.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dataset = dataset.with_options(options)
    if training and config.augment:
        dataset = dataset.map(
            lambda images, labels: (augment(images, config.shift_pixels), labels),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return dataset.prefetch(tf.data.AUTOTUNE)


def augment(images: tf.Tensor, shift_pixels: int) -> tf.Tensor:
    """Flip each image of the batch horizontally at random and shift it by up to `shift_pixels`."""
    images = tf.image.random_flip_left_right(images)
    if shift_pixels == 0:
        return images
    size = tf.shape(images)[1]
    padding = [[0, 0], [shift_pixels, shift_pixels], [shift_pixels, shift_pixels], [0, 0]]
    padded = tf.pad(images, padding, mode="REFLECT")
    return tf.map_fn(
        lambda image: tf.image.random_crop(image, [size, size, tf.shape(image)[-1]]), padded
    )


def _expand_files(file_patterns: list[str]) -> list[str]:
    files = sorted(path for pattern in file_patterns for path in tf.io.gfile.glob(pattern))
    if not files:
        raise FileNotFoundError(f"No example files match {file_patterns}.")
    return files


def _record_dataset(files: list[str]) -> tf.data.Dataset:
    # ImportExampleGen writes GZIP-compressed TFRecord files ending in .gz.
    compression = "GZIP" if files[0].endswith(".gz") else ""
    return tf.data.TFRecordDataset(files, compression_type=compression)


def count_examples(file_patterns: list[str]) -> int:
    """Count the records of a split without parsing them."""
    return int(_record_dataset(_expand_files(file_patterns)).reduce(0, lambda count, _: count + 1))


def first_serialized_example(file_patterns: list[str]) -> bytes:
    for record in _record_dataset(_expand_files(file_patterns)).take(1):
        return record.numpy()
    raise ValueError(f"The files {file_patterns} hold no example.")


def write_json(path: str, value: Any) -> None:
    """Write JSON through a temporary file, so readers never see half a file."""
    tf.io.gfile.makedirs(os.path.dirname(path))
    staging = path + ".tmp"
    with tf.io.gfile.GFile(staging, "w") as handle:
        json.dump(value, handle, indent=2)
    tf.io.gfile.rename(staging, path, overwrite=True)

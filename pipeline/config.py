"""Every tunable value of the pipeline, with its unit, in one place.

The runners build a `PipelineConfig` from their flags; `create_pipeline()` reads
nothing else. Values that run inside components (Transform, Trainer) travel as
their `custom_config` dictionaries, so they are recorded in ML Metadata with
each execution and take part in TFX's cache key.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

PIPELINE_NAME = "cifar10-resnet50"

# Feature names of the tf.Examples that data preparation writes and the
# curated schema in schemas/ describes.
IMAGE_KEY = "image_raw"
LABEL_KEY = "label"

# CIFAR-10's classes in the order of its label ids 0..9.
CIFAR10_LABEL_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

# Splits written by data preparation. `test` only feeds the Evaluator: it never
# takes part in early stopping or model selection.
TRAIN_SPLIT = "train"
EVAL_SPLIT = "eval"
TEST_SPLIT = "test"

# Values of `TrainingConfig.base_weights` other than a path to a weights file.
BASE_WEIGHTS_IMAGENET = "imagenet"
BASE_WEIGHTS_BLESSED = "blessed"
BASE_WEIGHTS_NONE = "none"
BASE_WEIGHTS_KEYWORDS = (BASE_WEIGHTS_IMAGENET, BASE_WEIGHTS_BLESSED, BASE_WEIGHTS_NONE)

# Values of `TrainingConfig.distribution_strategy`.
STRATEGY_DEFAULT = "default"
STRATEGY_MIRRORED = "mirrored"
STRATEGY_MULTI_WORKER = "multi_worker_mirrored"
STRATEGIES = (STRATEGY_DEFAULT, STRATEGY_MIRRORED, STRATEGY_MULTI_WORKER)

# Values of `TrainingConfig.optimizer`.
OPTIMIZER_ADAM = "adam"
OPTIMIZER_SGD = "sgd"
OPTIMIZERS = (OPTIMIZER_ADAM, OPTIMIZER_SGD)

# ResNet50 downsamples by 32, so keras.applications rejects smaller inputs.
MIN_IMAGE_SIZE = 32

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SCHEMA_DIR = os.path.join(REPO_ROOT, "schemas")
COMPONENTS_DIR = os.path.join(REPO_ROOT, "components")
TRANSFORM_MODULE_FILE = os.path.join(COMPONENTS_DIR, "transform.py")
TRAINER_MODULE_FILE = os.path.join(COMPONENTS_DIR, "trainer.py")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names it and the fix."""


def validate_model_name(name: str) -> None:
    """Raise ConfigError unless `name` is a plain folder name under the serving base."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ConfigError(
            f"model_name={name!r} is not a plain folder name; use letters, digits, '.', '_' "
            "and '-', starting with a letter or digit (e.g. --model-name cifar10)."
        )


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """Hyperparameters of the Trainer's run_fn (components/trainer.py)."""

    # Side of the square image, in pixels, that Transform resizes every image
    # to and the model takes as input.
    image_size: int = 32
    # Images per training and evaluation step.
    batch_size: int = 64
    # "imagenet", "blessed" (the last blessed model of this pipeline), "none"
    # (random initialisation) or a path to a Keras weights file of ResNet50
    # without its top.
    base_weights: str = BASE_WEIGHTS_IMAGENET
    # Mirror of Keras' ResNet50 ImageNet weights file; None uses Keras' own URL
    # and checks the file's published md5.
    imagenet_weights_url: str | None = None
    # Phase 1: epochs with the base model frozen and only the new head trained.
    # Skipped when base_weights is "none", since a random base gives no
    # features worth freezing.
    head_epochs: int = 1
    # Phase 2: epochs with the top `fine_tune_layers` layers of the base model
    # trainable (all of them when 0).
    fine_tune_epochs: int = 2
    fine_tune_layers: int = 0
    # Peak learning rates of phase 1 (also of phase 2 when training from random
    # initialisation) and of fine-tuning. Each phase warms up linearly for
    # `warmup_epochs` epochs and then decays along a cosine.
    learning_rate: float = 1e-3
    fine_tune_learning_rate: float = 1e-4
    warmup_epochs: float = 0.1
    # Fraction of the head's input units dropped during training.
    dropout: float = 0.2
    # Label smoothing of the cross-entropy loss, 0 turns it off.
    label_smoothing: float = 0.1
    # From random initialisation, start each residual block as the identity
    # (the last batch norm of its branch scaled by 0), which speeds up training.
    zero_init_residual: bool = True
    # "adam", or "sgd" (with Nesterov momentum). Both decay weights decoupled
    # from the gradient by `weight_decay` per unit of learning rate.
    optimizer: str = OPTIMIZER_ADAM
    momentum: float = 0.9
    weight_decay: float = 0.0
    # Random horizontal flips of training images, and random shifts by up to
    # `shift_pixels` pixels in each direction (0 turns shifts off). Shifts
    # slowed learning within 5 epochs from random initialisation here
    # (docs/benchmarks.md); longer runs may gain from 4.
    augment: bool = True
    shift_pixels: int = 0
    # Stop a phase after this many epochs without a lower loss on `eval`.
    early_stopping_patience: int = 3
    # Steps per epoch; None runs one full pass over the split per epoch.
    # Quick runs and tests set small values.
    steps_per_epoch: int | None = None
    eval_steps: int | None = None
    # Examples held in the shuffle buffer while reading training data.
    shuffle_buffer: int = 10_000
    # Batch normalisation through TensorFlow's fused kernel instead of Keras 3's
    # element-wise ops: same maths, about 1.4x faster training on CPU
    # (components/model.py, docs/benchmarks.md).
    fused_batch_norm: bool = True
    seed: int = 42
    # tf.distribute strategy: "default" (one device), "mirrored" (all local
    # devices) or "multi_worker_mirrored" (the cluster in TF_CONFIG). The batch
    # size above is global, split across replicas.
    distribution_strategy: str = STRATEGY_DEFAULT

    def validate(self) -> None:
        """Raise ConfigError for a value the Trainer could not use."""
        if self.image_size < MIN_IMAGE_SIZE:
            raise ConfigError(
                f"image_size={self.image_size} is below {MIN_IMAGE_SIZE} pixels, the smallest "
                f"input ResNet50 accepts; set --image-size to {MIN_IMAGE_SIZE} or more."
            )
        for name in ("batch_size", "shuffle_buffer"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be at least 1.")
        for name in ("head_epochs", "fine_tune_epochs", "fine_tune_layers"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)} must not be negative.")
        if self.head_epochs + self.fine_tune_epochs == 0:
            raise ConfigError("head_epochs and fine_tune_epochs are both 0: nothing would train.")
        for name in ("steps_per_epoch", "eval_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name}={value} must be at least 1, or unset for a full pass.")
        for name in ("learning_rate", "fine_tune_learning_rate"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be positive.")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout={self.dropout} must be in [0, 1).")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing={self.label_smoothing} must be in [0, 1).")
        if self.distribution_strategy not in STRATEGIES:
            raise ConfigError(
                f"distribution_strategy={self.distribution_strategy!r} is not one of "
                f"{', '.join(STRATEGIES)}."
            )
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"optimizer={self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}."
            )
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum={self.momentum} must be in [0, 1).")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay={self.weight_decay} must not be negative.")
        if self.shift_pixels < 0 or self.shift_pixels >= self.image_size:
            raise ConfigError(
                f"shift_pixels={self.shift_pixels} must be in 0..{self.image_size - 1}."
            )
        if self.warmup_epochs < 0:
            raise ConfigError(f"warmup_epochs={self.warmup_epochs} must not be negative.")
        if self.base_weights not in BASE_WEIGHTS_KEYWORDS and not os.path.isfile(self.base_weights):
            raise ConfigError(
                f"base_weights={self.base_weights!r} is neither one of "
                f"{', '.join(BASE_WEIGHTS_KEYWORDS)} nor an existing weights file; "
                "pass --base-weights with one of those or a path to a ResNet50 .h5 file."
            )

    def to_custom_config(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_custom_config(cls, values: dict[str, Any]) -> TrainingConfig:
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in names})


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    """Thresholds the Evaluator's blessing depends on."""

    # Lowest sparse categorical accuracy on `test`, as a fraction in [0, 1],
    # that a model needs to be blessed.
    min_accuracy: float = 0.5
    # Largest drop of test accuracy, as a fraction, allowed against the last
    # blessed model. 0 means the candidate must be at least as accurate.
    max_accuracy_drop: float = 0.0

    def validate(self) -> None:
        if not 0 <= self.min_accuracy <= 1:
            raise ConfigError(
                f"min_accuracy={self.min_accuracy} is outside 0..1; accuracy is a fraction, "
                "so pass e.g. --min-accuracy 0.6 for 60 %."
            )
        if not 0 <= self.max_accuracy_drop <= 1:
            raise ConfigError(
                f"max_accuracy_drop={self.max_accuracy_drop} is outside 0..1; pass a fraction."
            )


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Locations the pipeline reads and writes, and the settings of its components."""

    # Folder written by data preparation: train/, eval/, test/, label_names.txt.
    data_root: str
    # Root of every artifact the components write.
    pipeline_root: str
    # Folder of TensorFlow Serving's --model_base_path parent: models are
    # pushed to <serving_base>/<model_name>/<version>/.
    serving_base: str
    # ML Metadata SQLite file; None for runners that configure their own store.
    metadata_path: str | None
    label_names: tuple[str, ...]
    model_name: str = "cifar10"
    pipeline_name: str = PIPELINE_NAME
    schema_dir: str = DEFAULT_SCHEMA_DIR
    # Where this repository's files (module files, schema) are found when the
    # components run: this checkout for local runs, the container image's copy
    # for Kubeflow.
    code_root: str = REPO_ROOT
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = dataclasses.field(default_factory=EvaluationConfig)
    # Extra Apache Beam arguments for the Beam-based components.
    beam_pipeline_args: tuple[str, ...] = ("--direct_running_mode=in_memory",)
    enable_cache: bool = True

    def validate(self) -> None:
        self.training.validate()
        self.evaluation.validate()
        if len(self.label_names) < 2:
            raise ConfigError(
                f"label_names={list(self.label_names)} has fewer than 2 classes; "
                "check the data folder's label_names.txt."
            )
        validate_model_name(self.model_name)

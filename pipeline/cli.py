"""Command-line flags shared by the runners, and their conversion to pipeline configuration."""

from __future__ import annotations

import argparse

from pipeline import config as cfg


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the Trainer's hyperparameters as a flag group."""
    defaults = cfg.TrainingConfig()
    training = parser.add_argument_group("training")
    training.add_argument(
        "--base-weights",
        default=defaults.base_weights,
        help="Weights of the ResNet50 base model: 'imagenet' (downloaded by Keras), "
        "'blessed' (warm start from this pipeline's last blessed model), 'none' (random "
        "initialisation) or a path to a ResNet50 weights .h5 file without top "
        "(default: %(default)s).",
    )
    training.add_argument(
        "--imagenet-weights-url",
        default=None,
        help="URL of a mirror of Keras' ResNet50 ImageNet weights file (no md5 check). "
        "Default: Keras' own URL, checked against the published md5.",
    )
    training.add_argument(
        "--head-epochs",
        type=int,
        default=defaults.head_epochs,
        help="Epochs training only the new head on a frozen base (default: %(default)s; "
        "skipped with --base-weights none).",
    )
    training.add_argument(
        "--fine-tune-epochs",
        type=int,
        default=defaults.fine_tune_epochs,
        help="Epochs with the base model unfrozen (default: %(default)s).",
    )
    training.add_argument(
        "--fine-tune-layers",
        type=int,
        default=defaults.fine_tune_layers,
        help="Top layers of the base model unfrozen for fine-tuning, 0 for all "
        "(default: %(default)s).",
    )
    training.add_argument(
        "--learning-rate",
        type=float,
        default=defaults.learning_rate,
        help="Peak learning rate of the head phase and of training from random "
        "initialisation (default: %(default)s).",
    )
    training.add_argument(
        "--fine-tune-learning-rate",
        type=float,
        default=defaults.fine_tune_learning_rate,
        help="Peak learning rate of fine-tuning pre-trained weights (default: %(default)s).",
    )
    training.add_argument(
        "--optimizer",
        choices=cfg.OPTIMIZERS,
        default=defaults.optimizer,
        help="Optimizer: adam, or sgd with Nesterov momentum (default: %(default)s).",
    )
    training.add_argument(
        "--weight-decay",
        type=float,
        default=defaults.weight_decay,
        help="Decoupled weight decay per unit of learning rate, 0 for none "
        "(default: %(default)s).",
    )
    training.add_argument(
        "--shift-pixels",
        type=int,
        default=defaults.shift_pixels,
        help="Largest random shift of training images in pixels, 0 for flips only "
        "(default: %(default)s).",
    )
    training.add_argument(
        "--batch-size",
        type=int,
        default=defaults.batch_size,
        help="Images per step (default: %(default)s).",
    )
    training.add_argument(
        "--image-size",
        type=int,
        default=defaults.image_size,
        help="Side in pixels of the square model input; images are resized to it "
        "(default: %(default)s, minimum 32).",
    )
    training.add_argument(
        "--steps-per-epoch",
        type=int,
        default=None,
        help="Training steps per epoch. Default: one full pass over `train`.",
    )
    training.add_argument(
        "--eval-steps",
        type=int,
        default=None,
        help="Validation steps per epoch. Default: one full pass over `eval`.",
    )
    training.add_argument(
        "--distribution-strategy",
        choices=cfg.STRATEGIES,
        default=defaults.distribution_strategy,
        help="tf.distribute strategy of the Trainer; multi_worker_mirrored reads the cluster "
        "from TF_CONFIG (default: %(default)s).",
    )
    training.add_argument(
        "--seed",
        type=int,
        default=defaults.seed,
        help="Random seed of data splits, shuffling and initialisation (default: %(default)s).",
    )


def add_evaluation_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the Evaluator's blessing thresholds as a flag group."""
    evaluation = cfg.EvaluationConfig()
    evaluation_group = parser.add_argument_group("evaluation")
    evaluation_group.add_argument(
        "--min-accuracy",
        type=float,
        default=evaluation.min_accuracy,
        help="Lowest test accuracy, as a fraction in 0..1, that gets a model blessed "
        "(default: %(default)s).",
    )
    evaluation_group.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=evaluation.max_accuracy_drop,
        help="Largest drop of test accuracy, as a fraction, allowed against the last "
        "blessed model (default: %(default)s).",
    )


def add_beam_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the Apache Beam options of StatisticsGen, Transform and Evaluator."""
    beam = parser.add_argument_group("beam")
    beam.add_argument(
        "--direct-num-workers",
        type=int,
        default=0,
        help="Run Beam's DirectRunner in multi-processing mode with this many worker "
        "processes; 0 keeps it in one process (default: %(default)s).",
    )
    beam.add_argument(
        "--beam-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="Extra Beam pipeline argument, repeatable, e.g. --beam-arg=--runner=DataflowRunner "
        "--beam-arg=--project=my-project.",
    )


def training_config(args: argparse.Namespace, base_weights: str) -> cfg.TrainingConfig:
    """Build and validate the TrainingConfig from parsed flags."""
    training = cfg.TrainingConfig(
        image_size=args.image_size,
        batch_size=args.batch_size,
        base_weights=base_weights,
        imagenet_weights_url=args.imagenet_weights_url,
        head_epochs=args.head_epochs,
        fine_tune_epochs=args.fine_tune_epochs,
        fine_tune_layers=args.fine_tune_layers,
        learning_rate=args.learning_rate,
        fine_tune_learning_rate=args.fine_tune_learning_rate,
        optimizer=args.optimizer,
        weight_decay=args.weight_decay,
        shift_pixels=args.shift_pixels,
        steps_per_epoch=args.steps_per_epoch,
        eval_steps=args.eval_steps,
        seed=args.seed,
        distribution_strategy=args.distribution_strategy,
    )
    training.validate()
    return training


def evaluation_config(args: argparse.Namespace) -> cfg.EvaluationConfig:
    """Build and validate the EvaluationConfig from parsed flags."""
    evaluation = cfg.EvaluationConfig(
        min_accuracy=args.min_accuracy, max_accuracy_drop=args.max_accuracy_drop
    )
    evaluation.validate()
    return evaluation


def beam_pipeline_args(args: argparse.Namespace) -> tuple[str, ...]:
    """Return the Beam arguments: DirectRunner in memory, or with worker processes."""
    if args.direct_num_workers < 0:
        raise cfg.ConfigError(
            f"--direct-num-workers={args.direct_num_workers} must be 0 (one process) or more."
        )
    if args.direct_num_workers:
        direct = (
            "--direct_running_mode=multi_processing",
            f"--direct_num_workers={args.direct_num_workers}",
        )
    else:
        direct = ("--direct_running_mode=in_memory",)
    return direct + tuple(args.beam_arg)

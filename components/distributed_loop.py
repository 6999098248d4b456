"""Training loop for tf.distribute.MultiWorkerMirroredStrategy.

Keras 3.6's `Model.fit` fails under MultiWorkerMirroredStrategy before the
first step: it reduces a distributed input batch with `strategy.reduce`, which
raises "Attempt to convert a value (PerReplica...)" (keras-team/keras#20585).
This loop does what `fit` does for this model through `strategy.run`:
gradient steps, per-epoch validation, early stopping with the best weights
restored, and the same Keras callbacks for logging.
"""

from __future__ import annotations

import logging

import keras
import numpy as np
import tensorflow as tf

logger = logging.getLogger(__name__)


def fit_multi_worker(
    classifier: keras.Model,
    strategy: tf.distribute.Strategy,
    train_dataset: tf.data.Dataset,
    eval_dataset: tf.data.Dataset,
    epochs: int,
    train_steps: int,
    eval_steps: int,
    global_batch_size: int,
    patience: int,
    callbacks: list[keras.callbacks.Callback],
) -> dict[str, list[float]]:
    """Train `classifier` (compiled under `strategy`) and return per-epoch metrics."""
    loss_function = classifier.loss
    optimizer = classifier.optimizer
    train_iterator = iter(strategy.experimental_distribute_dataset(train_dataset))
    eval_iterator = iter(strategy.experimental_distribute_dataset(eval_dataset))

    def per_example_results(labels: tf.Tensor, probabilities: tf.Tensor):
        per_example = keras.ops.convert_to_tensor(
            loss_function(labels, probabilities), dtype="float32"
        )
        per_example = tf.reshape(per_example, [-1])
        correct = tf.cast(
            tf.equal(tf.argmax(labels, axis=-1), tf.argmax(probabilities, axis=-1)), tf.float32
        )
        return per_example, correct

    def train_replica_step(images: tf.Tensor, labels: tf.Tensor):
        with tf.GradientTape() as tape:
            probabilities = classifier(images, training=True)
            per_example, correct = per_example_results(labels, probabilities)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch_size)
        gradients = tape.gradient(loss, classifier.trainable_variables)
        optimizer.apply_gradients(zip(gradients, classifier.trainable_variables, strict=True))
        return tf.reduce_sum(per_example), tf.reduce_sum(correct), tf.size(correct)

    def eval_replica_step(images: tf.Tensor, labels: tf.Tensor):
        per_example, correct = per_example_results(labels, classifier(images, training=False))
        return tf.reduce_sum(per_example), tf.reduce_sum(correct), tf.size(correct)

    def reduced(step_function, iterator):
        images, labels = next(iterator)
        results = strategy.run(step_function, args=(images, labels))
        return [strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None) for value in results]

    train_step = tf.function(lambda: reduced(train_replica_step, train_iterator))
    eval_step = tf.function(lambda: reduced(eval_replica_step, eval_iterator))

    history: dict[str, list[float]] = {
        "loss": [],
        "accuracy": [],
        "val_loss": [],
        "val_accuracy": [],
    }
    callback_list = keras.callbacks.CallbackList(callbacks, model=classifier)
    best_loss, best_weights, waited = np.inf, None, 0
    callback_list.on_train_begin()
    for epoch in range(epochs):
        callback_list.on_epoch_begin(epoch)
        totals = np.zeros(3)
        for step in range(train_steps):
            totals += [float(value) for value in train_step()]
            callback_list.on_train_batch_end(step, {"loss": totals[0] / max(totals[2], 1)})
        eval_totals = np.zeros(3)
        for _ in range(eval_steps):
            eval_totals += [float(value) for value in eval_step()]
        logs = {
            "loss": totals[0] / max(totals[2], 1),
            "accuracy": totals[1] / max(totals[2], 1),
            "val_loss": eval_totals[0] / max(eval_totals[2], 1),
            "val_accuracy": eval_totals[1] / max(eval_totals[2], 1),
        }
        for key, value in logs.items():
            history[key].append(float(value))
        callback_list.on_epoch_end(epoch, logs)

        # Early stopping on the eval loss, as keras.callbacks.EarlyStopping
        # with restore_best_weights=True. Every worker gets the same reduced
        # loss, so all of them stop at the same epoch.
        if logs["val_loss"] < best_loss:
            best_loss, waited = logs["val_loss"], 0
            best_weights = [variable.numpy() for variable in classifier.weights]
        else:
            waited += 1
            if waited >= patience:
                logger.info("Early stopping after epoch %d.", epoch + 1)
                break
    if best_weights is not None:
        for variable, value in zip(classifier.weights, best_weights, strict=True):
            variable.assign(value)
    callback_list.on_train_end()
    return history

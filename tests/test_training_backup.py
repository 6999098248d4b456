"""Epoch backups and finished phases: what a rerun of an interrupted Trainer resumes from."""

from __future__ import annotations

import keras
import numpy as np

from components import trainer

EXAMPLES = 32


def small_model(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.Dense(8)(inputs))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    return model


def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((EXAMPLES, 4)).astype("float32"), rng.integers(0, 3, EXAMPLES)


def fit_with_backup(model: keras.Model, folder: str, epochs: int) -> trainer.EpochBackup:
    backup = trainer.EpochBackup(folder, trainer.EpochLogger("test", 8, EXAMPLES // 8))
    x, y = data()
    model.fit(x, y, batch_size=8, epochs=epochs, callbacks=[backup], verbose=0)
    return backup


def test_epoch_backup_keeps_only_the_last_complete_epoch(tmp_path):
    folder = tmp_path / "phase"
    fit_with_backup(small_model(1), str(folder), epochs=3)

    assert sorted(path.name for path in folder.iterdir()) == ["epoch-0003"]
    assert sorted(path.name for path in (folder / "epoch-0003").iterdir()) == [
        trainer.EpochBackup.WEIGHTS_FILE,
        trainer.EpochBackup.STATE_FILE,
    ]


def test_resume_restores_weights_and_optimizer(tmp_path):
    folder = tmp_path / "phase"
    first = small_model(1)
    fit_with_backup(first, str(folder), epochs=2)
    # A kill while the third epoch was being written leaves only its hidden folder.
    (folder / ".epoch-0003.tmp").mkdir()

    second = small_model(2)
    x, _ = data()
    second.optimizer.build(second.trainable_variables)
    backup = trainer.EpochBackup(str(folder), trainer.EpochLogger("test", 8, EXAMPLES // 8))
    backup.set_model(second)
    backup.on_train_begin()

    assert second._initial_epoch == 2
    np.testing.assert_allclose(second.predict(x, verbose=0), first.predict(x, verbose=0))
    assert int(second.optimizer.iterations) == int(first.optimizer.iterations) == 8
    assert len(backup.restored_history["loss"]) == 2


def test_resumed_fit_runs_only_the_remaining_epochs(tmp_path):
    folder = tmp_path / "phase"
    fit_with_backup(small_model(1), str(folder), epochs=2)

    backup = fit_with_backup(small_model(2), str(folder), epochs=5)

    assert len(backup.restored_history["loss"]) == 2
    assert sorted(path.name for path in folder.iterdir()) == ["epoch-0005"]


def test_finished_phase_restored_with_weights_and_history(tmp_path):
    model = small_model(1)
    history = {"loss": [1.0, 0.5], "images_per_second": [10.0, 12.0]}
    trainer.save_finished_phase(model, str(tmp_path), "head", history)

    fresh = small_model(2)
    restored = trainer.load_finished_phase(fresh, str(tmp_path), "head")

    assert restored == history
    for saved, loaded in zip(model.get_weights(), fresh.get_weights(), strict=True):
        np.testing.assert_array_equal(saved, loaded)
    assert trainer.load_finished_phase(fresh, str(tmp_path), "fine_tune") is None

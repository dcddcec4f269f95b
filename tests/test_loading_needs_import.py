"""What the README says about loading: a saved model holding kreg layers loads
with no `custom_objects` once `import kreg` has run, and not before (Keras finds
registered classes only in modules that were imported; it imports no module
named in a saved file but its own, keras/src/saving/serialization_lib.py)."""

import keras
import numpy as np
import pytest

import multi_worker

pytestmark = pytest.mark.integration

# No `import kreg` at the top: the loading process imports this file.


def _load(path, import_kreg):
    import keras

    if import_kreg:
        import kreg  # noqa: F401

    try:
        model = keras.saving.load_model(path)
    except TypeError as error:
        return {"error": str(error)}
    return {"prediction": np.asarray(model.predict(np.ones((2, 4, 3), "float32"), verbose=0))}


def test_loading_needs_import_kreg_and_nothing_else(tmp_path):
    import kreg

    inputs = keras.Input((4, 3))
    model = keras.Model(inputs, kreg.ConsistentDropout(0.5)(inputs))
    path = str(tmp_path / "model.keras")
    model.save(path)
    env = {"KERAS_BACKEND": keras.backend.backend()}

    without = multi_worker.run_isolated(_load, env, kwargs={"path": path, "import_kreg": False})
    assert "Could not locate class 'ConsistentDropout'" in without["error"]
    # Keras's message names the module to import.
    assert "kreg.layers.consistent_dropout" in without["error"]

    loaded = multi_worker.run_isolated(_load, env, kwargs={"path": path, "import_kreg": True})
    np.testing.assert_array_equal(loaded["prediction"], np.ones((2, 4, 3), "float32"))

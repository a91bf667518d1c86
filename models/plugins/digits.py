"""Plugin of the default `digits` model: its pixel-scaling Lambda, its Lambda globals and its custom layer.

The default model (trained by `python -m service default-model`, see `service/default_model.py`) is
built the way the Keras tutorials build models, so that it exercises what blog-style model files
need to load:

- a `Lambda` wrapping a Python `lambda` that reads the module global `SCALE` (the server gives the
  lambda this module's public names as globals when it loads the file);
- a custom layer, `ConvBlock`, saved by class name (the server finds it among this module's public
  names; it is deliberately not registered with `@keras.saving.register_keras_serializable`).

The server imports every `<MODELS_DIR>/plugins/*.py` at start-up and registers each public
module-level name both as a custom object and as a Lambda global (see docs/plugins.md). Keep this
module free of side effects beyond defining names.
"""

import keras

SCALE = 1.0 / 255.0
"""Factor the model's Lambda applies to raw pixels (0..255), so the network sees 0..1."""

IMAGE_SIZE = (28, 28)
"""(height, width) of the model's grayscale input."""


def scale_pixels() -> keras.layers.Layer:
    """Return the tutorial-style `Lambda` that scales raw pixels by the global `SCALE`."""
    return keras.layers.Lambda(lambda x: x * SCALE, name="scale_pixels")


class ConvBlock(keras.layers.Layer):
    """3x3 convolution, ReLU and 2x2 max-pooling as one custom layer (a tutorial-style building block)."""

    def __init__(self, filters: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.filters = filters
        self.conv = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")
        self.pool = keras.layers.MaxPooling2D(2)

    def build(self, input_shape) -> None:
        self.conv.build(input_shape)
        self.pool.build(self.conv.compute_output_shape(input_shape))

    def call(self, inputs):
        return self.pool(self.conv(inputs))

    def compute_output_shape(self, input_shape):
        return self.pool.compute_output_shape(self.conv.compute_output_shape(input_shape))

    def get_config(self) -> dict:
        return {**super().get_config(), "filters": self.filters}

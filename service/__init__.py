"""kerasserve: serve Keras / TensorFlow models over HTTP."""

__version__ = "0.1.0"

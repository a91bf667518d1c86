"""The competent hand-written server the benchmark compares kerasserve with.

What an engineer who read the Keras and TensorFlow docs writes in an afternoon: load the model once
per process, one TensorFlow thread per worker (intra- and inter-op), a compiled call
(`tf.function` with a fixed input signature, traced once at start), and per request: decode with
Pillow, resize, scale, call on a batch of one, answer the scores as JSON. No batching. Run with
`gunicorn -w 2 -k gthread --threads 4 bench.competent_app:app` (one worker per core),
`BENCH_MODEL=/path/model.keras`,
`BENCH_SCALE=unit` (x / 255) or `symmetric` (x / 127.5 - 1).
Only the benchmark uses this file; it is not part of the service.
"""

from __future__ import annotations

import io
import os

import tensorflow as tf

tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)

import keras  # noqa: E402 - after the thread settings, which must precede TensorFlow's start
import numpy as np  # noqa: E402
from flask import Flask, jsonify, request  # noqa: E402
from PIL import Image  # noqa: E402

app = Flask(__name__)
model = keras.models.load_model(os.environ["BENCH_MODEL"], compile=False)
_, HEIGHT, WIDTH, CHANNELS = model.input_shape
SYMMETRIC = os.environ.get("BENCH_SCALE", "unit") == "symmetric"
forward = tf.function(
    lambda x: model(x, training=False),
    input_signature=[tf.TensorSpec((None, HEIGHT, WIDTH, CHANNELS), tf.float32)],
)
forward(tf.zeros((1, HEIGHT, WIDTH, CHANNELS)))  # trace and warm up before the first request


@app.post("/predict")
def predict():
    data = request.files["image"].read() if "image" in request.files else request.get_data()
    image = Image.open(io.BytesIO(data)).convert("L" if CHANNELS == 1 else "RGB")
    if image.size != (WIDTH, HEIGHT):
        image = image.resize((WIDTH, HEIGHT), Image.Resampling.BILINEAR)
    x = np.asarray(image, dtype=np.float32).reshape(1, HEIGHT, WIDTH, CHANNELS)
    x = x / 127.5 - 1.0 if SYMMETRIC else x / 255.0
    scores = forward(x).numpy()[0]
    return jsonify({"model": "competent", "version": 1, "predictions": [scores.tolist()]})

"""The tutorial-style baseline the benchmark compares kerasserve with.

What most "serve a Keras model with Flask" tutorials do: load the model once per process, then per
request decode the image, resize and scale it, and call `model.predict` on a batch of one. Run with
`gunicorn -w 2 bench.tutorial_app:app` (sync workers), `BENCH_MODEL=/path/model.keras`.
Only the benchmark uses this file; it is not part of the service.
"""

from __future__ import annotations

import io
import os

import keras
import numpy as np
from flask import Flask, jsonify, request
from PIL import Image

app = Flask(__name__)
model = keras.models.load_model(os.environ["BENCH_MODEL"], compile=False)
_, HEIGHT, WIDTH, CHANNELS = model.input_shape


@app.post("/predict")
def predict():
    data = request.files["image"].read() if "image" in request.files else request.get_data()
    image = Image.open(io.BytesIO(data)).convert("L" if CHANNELS == 1 else "RGB").resize((WIDTH, HEIGHT))
    x = np.asarray(image, dtype=np.float32).reshape(1, HEIGHT, WIDTH, CHANNELS) / 255.0
    scores = model.predict(x, verbose=0)[0]
    return jsonify({"class": int(np.argmax(scores)), "score": float(np.max(scores))})

"""The framework ceiling the benchmark compares kerasserve with: the same stack, no model.

Flask under gunicorn with the service's own worker class (`service.worker.BalancedThreadWorker`,
2 workers, 16 threads each): `POST /predict` parses the same multipart upload the service gets,
reads the file, and answers a JSON body of 10 scores. No image decode, no model. Its requests/s is
what Flask and gunicorn allow on this machine; the service's CPU per request above it is ours.
Only the benchmark uses this file; it is not part of the service.
"""

from __future__ import annotations

from flask import Flask, jsonify, request

app = Flask(__name__)
SCORES = [0.1] * 10


@app.post("/predict")
def predict():
    data = request.files["image"].read() if "image" in request.files else request.get_data()
    if not data:
        return jsonify({"error": "no image"}), 400
    return jsonify({"model": "ceiling", "version": 1, "predictions": [SCORES]})

#!/usr/bin/env sh
# Classify an example digit with the default model, through each API kerasserve speaks.
# Start the server first with `make run` (it trains the default `digits` model on first run).
#   sh examples/predict.sh [IMAGE] [URL]
set -eu
IMAGE="${1:-examples/7.png}"
URL="${2:-http://localhost:8000}"

echo "# native API: multipart upload, classes and labels"
curl -sS -F "image=@${IMAGE}" "${URL}/predict_classes"
echo

echo "# the same, naming the model"
curl -sS -F "image=@${IMAGE}" "${URL}/models/digits/predict_classes"
echo

echo "# readiness and the model's status"
curl -sS "${URL}/readyz"
echo
curl -sS "${URL}/v1/models/digits"
echo

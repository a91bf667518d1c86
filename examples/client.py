"""A small kerasserve client: classify image files through `POST /predict_classes` (standard library only).

    python examples/client.py examples/7.png examples/3.png
    python examples/client.py --url http://localhost:8000 --model digits examples/*.png

Each image is uploaded as a multipart `image` field; the server's JSON answer is printed, followed
by one line per image with the top class. `--model NAME` calls `/models/NAME/predict_classes`
instead of the default model's route. `--token` sends `Authorization: Bearer <token>` (AUTH_TOKEN).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path


def encode_multipart(files: list[Path], field: str = "image") -> tuple[bytes, str]:
    """Return the multipart/form-data body carrying `files` under `field`, and its Content-Type."""
    boundary = uuid.uuid4().hex
    body = bytearray()
    for path in files:
        body += (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="{field}"; filename="{path.name}"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        body += path.read_bytes() + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return bytes(body), f"multipart/form-data; boundary={boundary}"


def classify(url: str, files: list[Path], *, model: str | None = None, token: str | None = None) -> dict:
    """POST `files` to the server at `url` and return its JSON answer.

    Raises:
        urllib.error.HTTPError: the server answered with an error status (its body says why).
    """
    route = f"/models/{model}/predict_classes" if model else "/predict_classes"
    body, content_type = encode_multipart(files)
    headers = {"Content-Type": content_type}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url.rstrip("/") + route, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def top_class(prediction: dict) -> str:
    """Return a readable top class of one prediction, whatever fields the answer carries."""
    for key in ("label", "class_id", "class"):
        if key in prediction:
            return str(prediction[key])
    classes = prediction.get("classes") or prediction.get("top_k") or []
    return str(classes[0]) if classes else json.dumps(prediction)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", type=Path, help="image files (PNG, JPEG, ...)")
    parser.add_argument("--url", default="http://localhost:8000", help="server address (default %(default)s)")
    parser.add_argument("--model", default=None, help="model name (default: the server's default model)")
    parser.add_argument("--token", default=None, help="bearer token, when the server sets AUTH_TOKEN")
    args = parser.parse_args(argv)
    try:
        answer = classify(args.url, args.images, model=args.model, token=args.token)
    except urllib.error.HTTPError as err:
        print(f"HTTP {err.code}: {err.read().decode(errors='replace')}", file=sys.stderr)
        return 1
    except urllib.error.URLError as err:
        print(f"cannot reach {args.url}: {err.reason} (is `make run` running?)", file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=2))
    for path, prediction in zip(args.images, answer.get("predictions", []), strict=False):
        print(f"{path}: {top_class(prediction)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Model files for fault tests: a Lambda model, the same model whose Lambda bytecode crashes CPython,
a plain Dense model, and an Embedding model (indices 0..4) for bad rows in a batch. Built with real Keras in a subprocess (the tests' own process stays free of
TensorFlow), once per folder.

The crashing bytecode is the Lambda's own code object with its instructions replaced by
`EXTENDED_ARG 0x40 (x3); JUMP_FORWARD 0; RETURN_VALUE`: a jump 2 GiB past the code, which CPython
3.11 does not check, so calling it dies with SIGSEGV, the way Lambda bytecode from another Python
version does (docs/keras-loading.md, fact 4). `dis` still reads it (the loader disassembles Lambda code
to find the globals it uses), so the crash happens only when Keras calls the Lambda.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

_BUILD = r"""
import base64, dis, json, marshal, os, sys, zipfile
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np
import keras

out = sys.argv[1]
inputs = keras.Input((4,), name="features")
model = keras.Model(inputs, keras.layers.Lambda(lambda x: x + 1.0, name="plus_one")(inputs))
model.save(os.path.join(out, "lambda_ok.keras"))

inputs = keras.Input((4,), name="features")
dense = keras.layers.Dense(2, name="scores")
model = keras.Model(inputs, dense(inputs))
dense.set_weights([np.ones((4, 2), np.float32), np.zeros(2, np.float32)])
model.save(os.path.join(out, "plain.keras"))
model.save(os.path.join(out, "plain.h5"))

inputs = keras.Input((3,), dtype="int32", name="ids")
lookup = keras.layers.Embedding(5, 2, name="lookup")  # indices 0..4; index i -> (2i, 2i + 1)
model = keras.Model(inputs, keras.layers.Flatten(name="vectors")(lookup(inputs)))
lookup.set_weights([np.arange(10, dtype=np.float32).reshape(5, 2)])
model.save(os.path.join(out, "embedding.keras"))

class Scale(keras.layers.Layer):
    def call(self, x):
        return x * 3.0

inputs = keras.Input((4,), name="features")
keras.Model(inputs, Scale(name="scale")(inputs)).save(os.path.join(out, "custom.keras"))

def crash(code_b64):
    code = marshal.loads(base64.b64decode(code_b64))
    op = dis.opmap
    raw = bytes([op["RESUME"], 0, op["EXTENDED_ARG"], 0x40, op["EXTENDED_ARG"], 0, op["EXTENDED_ARG"], 0,
                 op["JUMP_FORWARD"], 0, op["RETURN_VALUE"], 0])
    return base64.b64encode(marshal.dumps(code.replace(co_code=raw))).decode("ascii")

source = os.path.join(out, "lambda_ok.keras")
target = os.path.join(out, "lambda_crash.keras")
with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
    for item in src.infolist():
        data = src.read(item.filename)
        if item.filename == "config.json":
            config = json.loads(data)
            for layer in config["config"]["layers"]:
                if layer["class_name"] == "Lambda":
                    fn = layer["config"]["function"]["config"]
                    fn["code"] = crash(fn["code"])
            data = json.dumps(config).encode()
        dst.writestr(item, data)
"""

NAMES = ("lambda_ok.keras", "lambda_crash.keras", "plain.keras", "plain.h5", "custom.keras", "embedding.keras")

SCALE_PLUGIN = """
import keras


class Scale(keras.layers.Layer):
    def call(self, x):
        return x * 3.0
"""
"""A plugin defining the custom layer of custom.keras."""


def build_fault_models(folder: Path) -> Path:
    """Write the files in NAMES into `folder` (once) and return it."""
    folder.mkdir(parents=True, exist_ok=True)
    if all((folder / name).is_file() for name in NAMES):
        return folder
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    subprocess.run(
        [sys.executable, "-c", _BUILD, str(folder)], check=True, cwd=REPO, env=env, timeout=300, capture_output=True
    )
    return folder

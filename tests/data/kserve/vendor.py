"""Rebuild the vendored KServe CRD schemas from a KServe checkout: `python tests/data/kserve/vendor.py KSERVE_REPO`.

Takes the `openAPIV3Schema` of the ClusterServingRuntime (v1alpha1) and InferenceService (v1beta1)
CRDs from `config/crd/full/` (Apache-2.0), keeps only `spec.predictor` of the InferenceService (the
only component our manifests use), drops every `description` (documentation, not constraints), and
writes sorted, compact JSON. Nothing else changes: types, formats, enums, required lists and
`x-kubernetes-*` markers are as published.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
CRDS = {
    "clusterservingruntime.v1alpha1.json": ("serving.kserve.io_clusterservingruntimes.yaml", "v1alpha1", None),
    "inferenceservice.v1beta1.json": ("serving.kserve.io_inferenceservices.yaml", "v1beta1", ("predictor",)),
}


def strip_descriptions(node: object) -> object:
    if isinstance(node, dict):
        return {k: strip_descriptions(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [strip_descriptions(v) for v in node]
    return node


def main(kserve: Path) -> None:
    for out, (crd_file, version, keep) in CRDS.items():
        crd = yaml.safe_load((kserve / "config" / "crd" / "full" / crd_file).read_text())
        (entry,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
        schema = entry["schema"]["openAPIV3Schema"]
        if keep:
            spec = schema["properties"]["spec"]
            spec["properties"] = {k: v for k, v in spec["properties"].items() if k in keep}
        (HERE / out).write_text(json.dumps(strip_descriptions(schema), sort_keys=True, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))

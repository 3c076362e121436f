#!/usr/bin/env python3
"""Train a small real-data classifier for the qbake examples.

What it does
  - loads scikit-learn's bundled handwritten digits (sklearn.datasets.load_digits:
    1,797 8x8 images, integer pixels 0..16) and scales them to float32 x / 16.0;
  - splits them 75/25 with train_test_split(test_size=0.25, random_state=0, stratify=y);
  - trains MLPClassifier(hidden_layer_sizes=(128, 64), activation="relu",
    alpha=1e-2, max_iter=500, random_state=0) (adam; converges in 150 epochs;
    deterministic: fixed seeds, fixed data order);
  - writes, next to this script:
      digits.safetensors       F32 fc1.weight [128,64], fc1.bias [128],
                               fc2.weight [64,128], fc2.bias [64],
                               fc3.weight [10,64],  fc3.bias [10]
                               (PyTorch Linear layout [out, in]: sklearn's coefs_
                               are [in, out] and are transposed), plus the
                               `qbake.graph` metadata key (docs/format.md);
      digits_test.safetensors  images F32 [n_test, 64], labels I64 [n_test];
  - reloads both files, recomputes the forward pass in numpy float32 and asserts
    that its accuracy equals clf.score on the test split; prints the float test
    accuracy and the number of test samples.

Run with (pinned versions, see requirements-digits.txt):
  Python 3.11.7, numpy 2.4.6, scikit-learn 1.9.1 (with scipy 1.17.1,
  joblib 1.6.0, threadpoolctl 3.8.0), safetensors 0.8.0

How to run
  pip install -r examples/models/requirements-digits.txt
  python3 examples/models/train_digits.py
"""

import json
import os
import random

import numpy as np
from safetensors.numpy import load_file, save_file
from safetensors import safe_open
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

SEED = 0
HERE = os.path.dirname(os.path.abspath(__file__))
MODEL_PATH = os.path.join(HERE, "digits.safetensors")
TEST_PATH = os.path.join(HERE, "digits_test.safetensors")

GRAPH = {
    "version": 1,
    "inputs": [{"name": "pixels", "shape": [1, 64]}],
    "outputs": ["probs"],
    "nodes": [
        {"name": "fc1", "op": "Dense", "inputs": ["pixels"], "output": "h1",
         "weight": "fc1.weight", "bias": "fc1.bias", "activation": "relu"},
        {"name": "fc2", "op": "Dense", "inputs": ["h1"], "output": "h2",
         "weight": "fc2.weight", "bias": "fc2.bias", "activation": "relu"},
        {"name": "fc3", "op": "Dense", "inputs": ["h2"], "output": "logits",
         "weight": "fc3.weight", "bias": "fc3.bias"},
        {"name": "softmax", "op": "Softmax", "inputs": ["logits"], "output": "probs"},
    ],
}


def forward(x, t):
    """relu(x W1^T + b1) -> relu(. W2^T + b2) -> . W3^T + b3 -> softmax, in float32."""
    h = np.maximum(x @ t["fc1.weight"].T + t["fc1.bias"], np.float32(0))
    h = np.maximum(h @ t["fc2.weight"].T + t["fc2.bias"], np.float32(0))
    z = h @ t["fc3.weight"].T + t["fc3.bias"]
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def main():
    random.seed(SEED)
    np.random.seed(SEED)

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=SEED, stratify=y)

    clf = MLPClassifier(hidden_layer_sizes=(128, 64), activation="relu",
                        alpha=1e-2, max_iter=500, random_state=SEED)
    clf.fit(x_train, y_train)
    score = float(clf.score(x_test, y_test))

    # sklearn coefs_[i] is [in, out]; qbake's Dense wants [out, in].
    tensors = {}
    for i, (w, b) in enumerate(zip(clf.coefs_, clf.intercepts_), start=1):
        tensors[f"fc{i}.weight"] = np.ascontiguousarray(w.T, dtype=np.float32)
        tensors[f"fc{i}.bias"] = np.ascontiguousarray(b, dtype=np.float32)
    save_file(tensors, MODEL_PATH, metadata={"qbake.graph": json.dumps(GRAPH)})
    save_file({"images": np.ascontiguousarray(x_test, dtype=np.float32),
               "labels": np.ascontiguousarray(y_test, dtype=np.int64)}, TEST_PATH)

    # Verify what was written.
    model = load_file(MODEL_PATH)
    expected_shapes = {"fc1.weight": (128, 64), "fc1.bias": (128,),
                       "fc2.weight": (64, 128), "fc2.bias": (64,),
                       "fc3.weight": (10, 64), "fc3.bias": (10,)}
    assert {k: v.shape for k, v in model.items()} == expected_shapes, model.keys()
    assert all(v.dtype == np.float32 for v in model.values())
    with safe_open(MODEL_PATH, framework="numpy") as f:
        assert json.loads(f.metadata()["qbake.graph"]) == GRAPH
    test = load_file(TEST_PATH)
    images, labels = test["images"], test["labels"]
    assert images.dtype == np.float32 and images.shape == (len(y_test), 64)
    assert labels.dtype == np.int64 and labels.shape == (len(y_test),)

    probs = forward(images, model)
    correct = int((probs.argmax(axis=1) == labels).sum())
    n_test = int(labels.shape[0])
    assert correct / n_test == score, (correct, n_test, score)

    print(f"float test accuracy: {score:.6f} ({correct}/{n_test})")
    print(f"test samples: {n_test}")
    print(f"training iterations: {clf.n_iter_}")


if __name__ == "__main__":
    main()

"""docs/deployment.md's script runs as written with onnxruntime and NumPy only (neither torch nor
eqpdenet importable) and classifies test digits exactly as the model it was exported from."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data_helpers import data_dir_or_skip, mnist_or_skip
from eqpdenet.app.training import load_checkpoint
from eqpdenet.data.mnist import find_mnist_file
from eqpdenet.export import export_model

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "deployment.md"
#: Runs a script with torch and eqpdenet made unimportable (``import torch`` raises ImportError).
WITHOUT_TORCH = ("import runpy, sys; sys.modules.update(torch=None, eqpdenet=None); "
                 "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")


def the_script() -> str:
    blocks = re.findall(r"<!-- script: classify\.py -->\n```python\n(.*?)```", DOC.read_text(),
                        re.S)
    assert len(blocks) == 1, "docs/deployment.md has one block marked as classify.py"
    return blocks[0]


def test_the_deployment_script_classifies_like_the_model_without_torch(tmp_path):
    pytest.importorskip("onnxruntime")
    data, mnist = data_dir_or_skip(), mnist_or_skip()
    model, _, _ = load_checkpoint(ROOT / "results/paper/checkpoints/fcnn-h16-seed0.pt")
    images = torch.from_numpy(mnist.test_images[:1000]).float().div(255.0)[:, None]
    labels = torch.from_numpy(mnist.test_labels[:1000])
    export_model(model, tmp_path / "model.onnx", "onnx", images=images[:100])
    script = tmp_path / "classify.py"
    script.write_text(the_script())
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCH, str(script), str(tmp_path / "model.onnx"),
         str(find_mnist_file(data, "test_images")), str(find_mnist_file(data, "test_labels")),
         "1000"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    with torch.no_grad():
        predictions = model.eval()(images).argmax(1)
    accuracy = 100 * float((predictions == labels).double().mean())  # (trained on ROTMNIST)
    assert f"accuracy on 1000 test digits: {accuracy:.2f}%" in done.stdout, done.stdout
    assert "predictions: " + " ".join(map(str, predictions[:20].tolist())) in done.stdout


def test_the_guard_makes_torch_unimportable():
    done = subprocess.run([sys.executable, "-c", WITHOUT_TORCH.replace(
        "runpy.run_path(sys.argv[0], run_name='__main__')", "import torch")],
        capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "import of torch halted" in done.stderr

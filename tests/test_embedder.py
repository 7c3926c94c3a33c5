"""The ONNX embedder against fp32 reference vectors made with transformers (committed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from appliance.config import load_settings
from appliance.embed import load_embedder
from appliance.models import Registry

pytestmark = pytest.mark.integration

REFERENCE = json.loads((Path(__file__).parent / "data" / "minilm_fp32_reference.json").read_text())


@pytest.mark.parametrize("model_id", ["minilm-l6-v2-int8", "minilm-l6-v2-fp32"])
def test_cosine_to_reference(tmp_path: Path, model_id: str) -> None:
    settings = load_settings(home=tmp_path, embed={"model": model_id})
    embedder = load_embedder(settings, Registry.load(settings))
    vectors = embedder.embed(REFERENCE["sentences"])
    reference = np.array(REFERENCE["vectors"], dtype=np.float32)
    cosines = (vectors * reference).sum(axis=1)
    floor = 0.99 if model_id.endswith("int8") else 0.9999
    assert cosines.min() >= floor, cosines
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("model_id", ["minilm-l6-v2-int8", "minilm-l6-v2-fp32"])
def test_batching_and_truncation_do_not_change_vectors(tmp_path: Path, model_id: str) -> None:
    # the int8 model quantizes activations per call, so it embeds one text per call
    settings = load_settings(home=tmp_path, embed={"batch_size": 2, "model": model_id})
    embedder = load_embedder(settings)
    texts = ["short", "a somewhat longer sentence about tea", "word " * 1000]
    together = embedder.embed(texts)
    alone = np.vstack([embedder.embed([t]) for t in texts])
    assert np.allclose(together, alone, atol=1e-4)
    assert embedder.embed([]).shape == (0, 384)


def test_run_time_imports_no_training_stack(tmp_path: Path) -> None:
    code = (
        "import sys; import appliance.cli, appliance.api, appliance.embed, appliance.retrieve, "
        "appliance.store, appliance.ingest\n"
        "from appliance.api import Appliance\n"
        "bad = [m for m in ('torch', 'transformers', 'peft', 'optimum') if m in sys.modules]\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

"""`import bis_prm` stays light and still makes `AutoModelForTokenClassification` load saved PRMs."""

import subprocess
import sys

import pytest

from bis_prm.model.modeling_prm import load_prm
from tests.utils import tiny_base

IMPORTS = {
    # transformers' auto classes loaded after bis_prm: the import hook registers, and torch was not needed before
    "bis_prm first": (
        "import bis_prm\n"
        "assert 'torch' not in sys.modules, 'import bis_prm imported torch'\n"
        "from transformers import AutoModelForTokenClassification\n"
    ),
    # already loaded: registered at import
    "transformers first": "from transformers import AutoModelForTokenClassification\nimport bis_prm\n",
}
LOAD = (
    "model = AutoModelForTokenClassification.from_pretrained(sys.argv[1])\n"
    "print(type(model).__name__, model.config.prm_head, model.config.step_token)\n"
)


@pytest.fixture(scope="module")
def saved_prm(tmp_path_factory):
    model, processor = load_prm(tiny_base("qwen2_5_vl", tmp_path_factory), head="linear")
    path = tmp_path_factory.mktemp("saved-prm")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.mark.parametrize("order", IMPORTS)
def test_auto_class_loads_saved_prm_after_import(saved_prm, order):
    script = "import sys\n" + IMPORTS[order] + LOAD
    env = {"HF_HUB_OFFLINE": "1", "BIS_PRM_NO_METRIC_INSTALL": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script, str(saved_prm)], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["Qwen2_5_VLForTokenClassification", "linear", "<prm>"]

"""`import bis_prm` makes `AutoModelForTokenClassification` load saved PRMs, with transformers' own `register`; the
`bis-prm` command line imports torch only in the sub-commands that need it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bis_prm.model.modeling_prm import load_prm
from tests.utils import tiny_base

IMPORTS = {
    "bis_prm first": "import bis_prm\nfrom transformers import AutoModelForTokenClassification\n",
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
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "BIS_PRM_NO_METRIC_INSTALL": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script, str(saved_prm)], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["Qwen2_5_VLForTokenClassification", "linear", "<prm>"]


@pytest.mark.parametrize("entry", ["console script", "python -m"])
def test_data_commands_do_not_import_torch(entry, tmp_path):
    script = Path(sys.executable).parent / "bis-prm"
    command = [str(script)] if entry == "console script" else [sys.executable, "-m", "bis_prm"]
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1", "HF_MODULES_CACHE": str(tmp_path)}
    result = subprocess.run([*command, "select", "--help"], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and "(p_pos * (1 - p_pos) + alpha) * R" in result.stdout, result.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "bis_prm.data.selection" in imported and "torch" not in imported and "transformers" not in imported

"""The processbench and prmbench metrics load with `evaluate.load` by path and by bare name, offline, once bis_prm is
imported; `install_metrics` installs every metric once, atomically, next to visualprocessbench."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from bis_prm.evaluation.metrics import PRMBENCH, PROCESSBENCH, compute_prmbench, compute_processbench, install_metrics
from bis_prm.evaluation.metrics.install import METRIC_NAMES, install_metric, script_hash
from tests.utils import REPO_ROOT

KWARGS = {
    "processbench": {
        "predictions": [[0.9, 0.2, 0.7], [0.8, 0.6], [0.3, 0.9]],
        "references": [1, -1, 0],
        "splits": ["gsm8k", "gsm8k", "math"],
    },
    "prmbench": {
        "predictions": [[0.9, 0.2, 0.7], [0.8, 0.6], [0.3]],
        "references": [[2], [2], []],
        "classifications": ["circular", "confidence", "correct"],
    },
}


def test_install_metrics_once_for_every_metric(tmp_path):
    paths = install_metrics(tmp_path)
    assert [path.split("/")[-1] for path in paths] == [f"{name}.py" for name in METRIC_NAMES]
    for name, path in zip(METRIC_NAMES, paths, strict=True):
        source = open(path, encoding="utf-8").read()
        assert path.split("/")[-2] == script_hash(source) and f"evaluate-metric--{name}" in path
    mtimes = [os.stat(path).st_mtime_ns for path in paths]
    assert install_metrics(tmp_path) == paths and [os.stat(path).st_mtime_ns for path in paths] == mtimes
    with pytest.raises(ValueError, match="Unknown metric 'accuracy'"):
        install_metric(tmp_path, "accuracy")


def test_evaluate_load_by_path_and_bare_name_offline(tmp_path):
    script = textwrap.dedent(
        """
        import doctest, json, sys
        import bis_prm  # installs the metrics into the (fresh) modules cache
        import evaluate
        from bis_prm.evaluation.metrics import PRMBENCH, PROCESSBENCH
        from bis_prm.evaluation.metrics.prmbench import prmbench
        from bis_prm.evaluation.metrics.processbench import processbench

        kwargs = json.loads(sys.argv[1])
        out, failures = {}, 0
        for name, path, module in (("processbench", PROCESSBENCH, processbench), ("prmbench", PRMBENCH, prmbench)):
            out[name] = [evaluate.load(ref).compute(**kwargs[name]) for ref in (path, name)]
            failures += doctest.testmod(module, extraglobs={"evaluate": evaluate}).failed
            card = open(path.replace(f"{name}.py", "README.md")).read()
            examples = card.split("### Examples")[1].split("## Limitations")[0].replace("```python", "")
            test = doctest.DocTestParser().get_doctest(examples.replace("```", ""), {}, name, None, 0)
            failures += doctest.DocTestRunner().run(test).failed
        out["doctest_failures"] = failures
        print("RESULT" + json.dumps(out))
        """
    )
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
        "HF_HUB_OFFLINE": "1",
        "HF_EVALUATE_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    run = subprocess.run(
        [sys.executable, "-c", script, json.dumps(KWARGS)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.split("RESULT")[-1])
    assert out["doctest_failures"] == 0
    for name, compute in (("processbench", compute_processbench), ("prmbench", compute_prmbench)):
        by_path, by_name = out[name]
        assert by_path == by_name == json.loads(json.dumps(compute(**KWARGS[name])))
    assert out["processbench"][0]["per_split"]["gsm8k"]["f1"] == 100.0
    assert PROCESSBENCH.endswith("processbench/processbench.py") and PRMBENCH.endswith("prmbench/prmbench.py")

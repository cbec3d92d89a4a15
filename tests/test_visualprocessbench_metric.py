import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from bis_prm.evaluation.metrics import VISUALPROCESSBENCH, compute_visualprocessbench, install_metric, select_threshold
from bis_prm.evaluation.metrics.install import script_hash
from bis_prm.evaluation.metrics.visualprocessbench.visualprocessbench import _auroc, _round4
from tests.oracles.reference_visualprocessbench import reference_visualprocessbench as reference
from tests.utils import REPO_ROOT, random_benchmark


def assert_same(actual: dict, expected: dict, tol: float = 1e-12):
    """Equal dicts, floats to `tol` (keys of `actual` absent from the reference must be listed explicitly)."""
    assert set(actual) - set(expected) == {"threshold_source"}
    for key, value in expected.items():
        if isinstance(value, dict):
            assert set(actual[key]) == set(value), key
            for sub in value:
                assert_same_value(actual[key][sub], value[sub], tol, f"{key}.{sub}")
        else:
            assert_same_value(actual[key], value, tol, key)


def assert_same_value(actual, expected, tol, name):
    if isinstance(expected, dict):
        assert set(actual) == set(expected), name
        for key in expected:
            assert_same_value(actual[key], expected[key], tol, f"{name}.{key}")
    elif isinstance(expected, float):
        assert abs(actual - expected) <= tol, (name, actual, expected)
    else:
        assert actual == expected, (name, actual, expected)


def test_hand_computed_example():
    # MathVerse: (1, .9) (-1, .2) -> perfect. MMMU: (1, .8) (-1, .6) at 0.5 -> both predicted +1:
    # F1(+1) = 2/(2+1) = 2/3, F1(-1) = 0 -> macro 1/3. micro = (1*2 + 1/3*2)/4 = 2/3.
    # Pooled: TP+ = 2, FP+ = 1, FN+ = 0 -> 4/5; TP- = 1, FN- = 1 -> 2/3; macro = 11/15.
    results = compute_visualprocessbench(
        [[0.9, 0.2, 0.7], [0.8, 0.6]], [[1, -1, 0], [1, -1]], ["MathVerse", "MMMU"], threshold=0.5
    )
    assert results["micro_over_sources"] == pytest.approx(2 / 3, abs=1e-15)
    assert results["macro_f1_pooled"] == pytest.approx(11 / 15, abs=1e-15)
    assert results["f1_positive"] == pytest.approx(0.8, abs=1e-15)
    assert results["f1_negative"] == pytest.approx(2 / 3, abs=1e-15)
    assert results["total_steps"] == 4
    assert results["auroc"] == 1.0
    assert results["threshold_source"] == "fixed"
    assert list(results["per_source"]) == ["MathVerse", "MMMU"]
    assert results["per_source"]["MMMU"] == {
        "macro_f1": pytest.approx(1 / 3),
        "f1_positive": pytest.approx(2 / 3),
        "f1_negative": 0.0,
        "steps": 2,
    }
    # threshold 0.6 is inclusive (>=), 0.61 separates MMMU
    mmmu = ([[0.8, 0.6]], [[1, -1]], ["MMMU"])
    assert compute_visualprocessbench(*mmmu, 0.6)["micro_over_sources"] == pytest.approx(1 / 3)
    assert compute_visualprocessbench(*mmmu, 0.61)["micro_over_sources"] == 1.0
    auto = compute_visualprocessbench(
        [[0.9, 0.2, 0.7], [0.8, 0.6]], [[1, -1, 0], [1, -1]], ["MathVerse", "MMMU"], "auto"
    )
    # candidates 0.2, 0.6, 0.8, 0.9 (0.7 is neutral): 0.8 is the first with micro = 1
    assert auto["threshold"] == 0.8 and auto["micro_over_sources"] == 1.0
    assert auto["threshold_source"] == "auto (same split)" and auto["auto_search"]["num_candidates"] == 4


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("threshold", [0.5, 0.37, "auto"])
def test_matches_reference_on_random_predictions(seed, threshold):
    predictions, references, data_sources = random_benchmark(seed, decimals=2 if seed % 2 else None)
    expected = reference(predictions, references, data_sources, threshold)
    assert_same(compute_visualprocessbench(predictions, references, data_sources, threshold), expected)


@pytest.mark.parametrize("threshold", [0.5, "auto"])
def test_matches_reference_with_single_class_and_empty_sources(threshold):
    predictions, references, data_sources = random_benchmark(7, rows=60, decimals=1)
    # a source with only correct steps, one with only wrong steps, one with neutral steps only (no entry)
    predictions += [[0.3, 0.9], [0.1, 0.7, 0.4], [0.5, 0.5], [0.2]]
    references += [[1, 1], [-1, -1, -1], [0, 0], [1]]
    data_sources += ["OnlyCorrect", "OnlyWrong", "OnlyNeutral", "OnlyCorrect"]
    expected = reference(predictions, references, data_sources, threshold)
    actual = compute_visualprocessbench(predictions, references, data_sources, threshold)
    assert "OnlyNeutral" not in actual["per_source"]
    assert actual["per_source"]["OnlyWrong"]["f1_positive"] == 0.0
    assert_same(actual, expected)


def test_matches_reference_with_more_than_1000_candidates():
    predictions, references, data_sources = random_benchmark(11, rows=600)
    expected = reference(predictions, references, data_sources, "auto")
    assert expected["auto_search"]["num_candidates"] < 2000  # thinned from > 1000
    assert_same(compute_visualprocessbench(predictions, references, data_sources, "auto"), expected)


def test_degenerate_inputs_match_reference():
    for args in [([], [], []), ([[0.4, 0.6]], [[0, 0]], ["MMMU"]), ([[0.4, 0.6]], [[1, 1]], ["MMMU"])]:
        for threshold in (0.5, "auto"):
            assert_same(compute_visualprocessbench(*args, threshold), reference(*args, threshold))


def test_round4_is_pythons_round():
    halfway = np.array([k / 1e4 + 5e-5 for k in range(0, 20000, 7)] + [0.00015, 0.12345, 2.67185, 1.00005, -0.00025])
    values = np.concatenate([halfway, np.random.default_rng(0).random(5000), [0.0, 1.0, 1e-9]])
    assert _round4(values).tolist() == [round(float(x), 4) for x in values]


def test_auroc_equals_sklearn_with_ties():
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(3000), 2)
    positive = rng.random(3000) < 0.7
    assert _auroc(scores, positive) == pytest.approx(roc_auc_score(positive, scores), abs=1e-12)
    assert _auroc(scores, np.ones(3000, dtype=bool)) is None


def test_select_threshold_is_the_auto_threshold():
    predictions, references, data_sources = random_benchmark(5)
    threshold = select_threshold(predictions, references, data_sources)
    assert threshold == reference(predictions, references, data_sources, "auto")["threshold"]
    assert select_threshold([[0.9, 0.4, 0.2]], [[1, 1, -1]], ["MMMU"]) == 0.4


@pytest.mark.parametrize(
    "args, message",
    [
        (([[0.1, 0.2]], [[1]], ["MMMU"]), "Row 0: 2 step scores but 1 step labels"),
        (([[0.1], [0.2]], [[1], [2]], ["MMMU", "MMMU"]), "Row 1: step labels must be 1, 0 or -1, got 2"),
        (([[0.1]], [[1]], [""]), "Row 0: data source must be a non-empty string"),
        (([[0.1]], [[1], [1]], ["MMMU"]), "one entry per benchmark row"),
        (([[0.1], [float("nan")]], [[1], [1]], ["A", "B"]), "Row 1: step score is NaN"),
    ],
)
def test_bad_input_is_a_clear_error(args, message):
    with pytest.raises(ValueError, match=message):
        compute_visualprocessbench(*args)


def test_bad_threshold():
    with pytest.raises(ValueError, match='threshold must be a float or "auto"'):
        compute_visualprocessbench([[0.1]], [[1]], ["MMMU"], threshold="best")


def test_install_metric_once_and_atomically(tmp_path):
    source = open(VISUALPROCESSBENCH, encoding="utf-8").read()
    metric_dir = tmp_path / "evaluate_modules" / "metrics" / "evaluate-metric--visualprocessbench"
    older = metric_dir / ("0" * 64)  # what an older bis_prm left behind
    older.mkdir(parents=True)
    (older / "visualprocessbench.py").write_text("# an older version\n")
    os.utime(older / "visualprocessbench.py", (2, 2))
    path = install_metric(tmp_path)
    hash_dir = metric_dir / script_hash(source)
    assert path == str(hash_dir / "visualprocessbench.py") and open(path, encoding="utf-8").read() == source
    assert json.loads((hash_dir / "visualprocessbench.json").read_text())["local file path"] == path
    for package in [tmp_path, tmp_path / "evaluate_modules", metric_dir.parent, metric_dir, hash_dir]:
        assert (package / "__init__.py").is_file()
    assert os.stat(path).st_mtime > 2  # evaluate picks the most recently modified hash: ours
    mtime = os.stat(path).st_mtime_ns
    assert install_metric(tmp_path) == path
    assert os.stat(path).st_mtime_ns == mtime  # installed once: nothing written again
    assert sorted(p.name for p in metric_dir.iterdir()) == ["0" * 64, "__init__.py", script_hash(source)]


def test_evaluate_load_by_path_and_bare_name_offline(tmp_path):
    """In a fresh process, offline, cwd elsewhere: `evaluate.load` by path and by bare name give the same numbers."""
    script = textwrap.dedent(
        """
        import doctest, json, sys
        import bis_prm  # installs the metric into the (fresh) modules cache
        from bis_prm.evaluation.metrics import VISUALPROCESSBENCH, install_metric
        import evaluate
        from evaluate.loading import files_to_hash
        from bis_prm.evaluation.metrics.visualprocessbench import visualprocessbench as module

        kwargs = json.loads(sys.argv[1])
        out = {"hash_matches": files_to_hash([VISUALPROCESSBENCH]) == install_metric().split("/")[-2]}
        for name in (VISUALPROCESSBENCH, "visualprocessbench"):
            metric = evaluate.load(name)
            out[name] = [metric.compute(**kwargs, threshold=t) for t in (0.5, "auto")]
        # the docstring and card examples, run against the bare name
        failures = doctest.testmod(module, extraglobs={"evaluate": evaluate}).failed
        card = open(VISUALPROCESSBENCH.replace("visualprocessbench.py", "README.md")).read()
        examples = card.split("### Examples")[1].split("## Limitations")[0].replace("```python", "").replace("```", "")
        parser = doctest.DocTestParser()
        test = parser.get_doctest(examples, {}, "card", None, 0)
        failures += doctest.DocTestRunner().run(test).failed
        out["doctest_failures"] = failures
        print("RESULT" + json.dumps(out))
        """
    )
    predictions, references, data_sources = random_benchmark(3, rows=40)
    kwargs = {"predictions": predictions, "references": references, "data_sources": data_sources}
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
        "HF_HUB_OFFLINE": "1",
        "HF_EVALUATE_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    run = subprocess.run(
        [sys.executable, "-c", script, json.dumps(kwargs)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.split("RESULT")[-1])
    assert out["hash_matches"] and out["doctest_failures"] == 0
    by_path_and_name = zip(out[VISUALPROCESSBENCH], out["visualprocessbench"], strict=True)
    for threshold, (by_path, by_name) in zip((0.5, "auto"), by_path_and_name, strict=True):
        expected = reference(predictions, references, data_sources, threshold)
        assert_same(by_path, json.loads(json.dumps(expected)))
        assert by_name == by_path
    assert math.isfinite(by_name["auroc"])

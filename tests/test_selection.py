import math

import datasets
import numpy as np
import pytest

from bis_prm.data.selection import build_subset, select_bis, select_subset, selection_indices, subset_report
from bis_prm.testing import make_corpus

NAN = math.nan
# (mc_scores, invalid_reason); BIS at alpha=0.2 in the comments
ROWS_A = [
    ([1.0, 1.0], ""),  # 0: 0.2, R=1, mean 1
    ([0.5, 0.0], ""),  # 1: 0.225, mixed, mean .25
    ([0.0, 0.0], ""),  # 2: 0.2, R=1, mean 0
    ([1.0, 0.0], ""),  # 3: 0.45, mixed
    ([0.25], ""),  # 4: 0.05
    ([1.0, 0.0], ""),  # 5: 0.45 (tie with 3), mixed
    ([NAN], "missing_score"),  # 6
    ([0.75, 0.75, 0.0], ""),  # 7: 0.3167, mixed
    ([0.0], ""),  # 8: 0.2, mean 0
    ([0.5, 0.5], ""),  # 9: 0.1
]
ROWS_B = [
    ([0.1, 0.0], ""),  # 10: 0.045, mixed, mean .05
    ([0.9], ""),  # 11: 0.18
    ([0.3, 0.0], ""),  # 12: 0.135, mixed
    ([], "no_steps"),  # 13
    ([0.9, 0.9], ""),  # 14: 0.18 (tie with 11)
]


@pytest.fixture
def scored():
    rows = ROWS_A + ROWS_B
    ds = datasets.Dataset.from_dict(
        {
            "source": ["a"] * len(ROWS_A) + ["b"] * len(ROWS_B),
            "mc_scores": [scores for scores, _ in rows],
            "invalid_reason": [reason for _, reason in rows],
            "row": list(range(len(rows))),
        }
    )
    return ds


@pytest.mark.parametrize(
    "method, expected",
    [
        ("bis", [3, 5, 11]),
        ("reliable", [0, 2, 11]),
        ("mixed", [1, 3, 10]),
        ("low_mc", [2, 8, 10]),
        ("full", [0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12, 14]),
    ],
)
def test_methods_on_a_hand_built_example(scored, method, expected):
    # a: 9 valid -> max(1, int(9 * 0.25)) = 2 kept; b: 4 valid -> 1 kept
    assert select_subset(scored, method=method, ratio=0.25, alpha=0.2)["row"] == expected


def test_alpha_is_applied_at_selection_time(scored):
    # alpha=0: b's BIS is p(1-p) * R, so the mixed row 12 (0.075) beats the all-positive rows 11 and 14
    assert select_bis(scored, ratio=0.25, alpha=0.0)["row"] == [3, 5, 12]


def test_random_is_seeded_and_samples_valid_rows_per_source(scored):
    subset = select_subset(scored, method="random", ratio=0.25, seed=3)
    rng = np.random.default_rng(3)
    valid_a, valid_b = np.array([0, 1, 2, 3, 4, 5, 7, 8, 9]), np.array([10, 11, 12, 14])
    expected = sorted([*valid_a[rng.choice(9, 2, replace=False)], *valid_b[rng.choice(4, 1, replace=False)]])
    assert subset["row"] == expected
    assert select_subset(scored, method="random", ratio=0.25, seed=3)["row"] == expected
    draws = {tuple(select_subset(scored, method="random", ratio=0.25, seed=s)["row"]) for s in range(6)}
    assert len(draws) > 1


def test_grouping_over_the_whole_dataset(scored):
    # 13 valid rollouts -> int(13 * 0.25) = 3: the two 0.45 rows then 0.3167
    assert select_subset(scored, ratio=0.25, alpha=0.2, by=None)["row"] == [3, 5, 7]


def test_bad_arguments(scored):
    with pytest.raises(ValueError, match="unknown selection method"):
        selection_indices(scored, method="best")
    with pytest.raises(ValueError, match="ratio"):
        select_subset(scored, ratio=0.0)


def test_report_counts_add_up(scored):
    from bis_prm.data.scoring import score_rollouts

    scored = score_rollouts(scored, alpha=0.2)
    subset = select_subset(scored, ratio=0.25, alpha=0.2)
    report = subset_report(scored, subset, params={"method": "bis"})
    a = report["sources"]["a"]
    assert (a["read"], a["valid"], a["kept"]) == (10, 9, 2)
    assert a["dropped"]["missing_score"] == 1 and a["dropped"]["not_selected"] == 7
    assert report["sources"]["b"]["dropped"]["no_steps"] == 1
    for counts in [*report["sources"].values(), report["total"]]:
        assert counts["kept"] + sum(counts["dropped"].values()) == counts["read"]
    assert report["stats"]["kept"]["rollouts"] == 3
    assert report["stats"]["kept"]["positive_steps"] == 3 and report["stats"]["kept"]["negative_steps"] == 2
    assert report["stats"]["all"]["share_mixed"] == pytest.approx(6 / 13)


def test_build_subset_returns_prm_rows_and_report(tmp_path):
    make_corpus(tmp_path, num_sources=2, rollouts_per_source=30)
    prm, report = build_subset(tmp_path, ratio=0.1, alpha=0.2, progress=False)
    assert len(prm) == report["total"]["kept"] == 6
    assert prm[0]["image"][0].startswith("VisualPRM400K-v1.1-Raw/") and prm[0]["image_root"] == str(tmp_path)
    assert report["params"]["method"] == "bis" and report["sources"]["source_00"]["read"] == 30

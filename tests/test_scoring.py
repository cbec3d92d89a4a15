import math

import datasets
import pyarrow as pa
import pytest

from bis_prm.data.scoring import score_batch, score_rollouts
from bis_prm.data.visualprm400k import load_visualprm400k
from bis_prm.testing import make_corpus
from tests.oracles.reference_selection import rollout_bis


def _dataset():
    return datasets.Dataset.from_dict(
        {
            "mc_scores": [[0.5, 0.0, 1.0], [0.0, 0.0], [1.0, 1.0], [0.25], [0.5, math.nan], []],
            "invalid_reason": ["", "", "", "", "missing_score", "no_steps"],
        }
    )


def test_hand_computed_scores():
    scored = score_rollouts(_dataset(), alpha=0.2)
    assert scored["labels"] == [[1.0, 0.0, 1.0], [0.0, 0.0], [1.0, 1.0], [1.0], [], []]
    assert scored["p_pos"][:4] == pytest.approx([2 / 3, 0.0, 1.0, 1.0])
    assert scored["reliability"][:4] == pytest.approx([0.75, 1.0, 1.0, 0.25])
    assert scored["bis"][:4] == pytest.approx([(2 / 9 + 0.2) * 0.75, 0.2, 0.2, 0.05])
    assert scored["is_mixed"] == [True, False, False, False, False, False]
    assert all(math.isnan(scored[name][i]) for name in ("p_pos", "reliability", "bis") for i in (4, 5))
    assert scored["mc_scores"][0] == [0.5, 0.0, 1.0]  # the soft labels stay


def test_tau_moves_the_hard_labels():
    scored = score_rollouts(_dataset(), tau=0.5, alpha=0.0)
    assert scored["labels"][0] == [0.0, 0.0, 1.0]
    assert scored["reliability"][0] == 1.0
    assert scored["bis"][0] == pytest.approx(2 / 9)


def test_rows_without_invalid_reason_column_are_checked_from_scores():
    batch = score_batch(pa.table({"mc_scores": [[0.5, 1.2], [0.5, float("nan")], [0.5]]}), alpha=0.2)
    assert batch.column("labels").to_pylist() == [[], [], [1.0]]
    assert batch.column("bis").to_pylist()[2] == pytest.approx(0.1)


def test_matches_the_reference_exactly_and_is_num_proc_safe(tmp_path):
    make_corpus(tmp_path, num_sources=2, rollouts_per_source=60)
    ds = load_visualprm400k(tmp_path)
    scored = score_rollouts(ds, alpha=0.05, batch_size=17)
    assert scored["bis"] == [rollout_bis(scores, 0.05) for scores in ds["mc_scores"]]  # bit-for-bit
    parallel = score_rollouts(ds, alpha=0.05, num_proc=2, batch_size=17)
    assert parallel["bis"] == scored["bis"] and parallel["labels"] == scored["labels"]

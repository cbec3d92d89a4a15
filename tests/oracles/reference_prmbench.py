"""A transcription of the official PRMBench toolkit (ssmisya/PRMBench): the task `prmtest_classified`
(`mr_eval/tasks/prmtest_classified/task.py`: `load_data_function`, `evaluate_function`, `eval_on_hallucination_step`),
its PRMs' labels (`step_level_validity_labels = [score > validity_threshold ...]`, e.g. `mr_eval/models/qwen_prm.py`)
and the PRMScore of its tables (`get_prmscore_from_current_res_dict`, `mr_visualize/.../form_latex_strs.ipynb`).

It starts from the raw JSONL records, so the tests check our reader and metric together against it. Only the parts
that lead to the F1s and PRMScores are transcribed (not the step accuracies or the similarity). Loops and dicts
only; the oracle of `tests/test_prmbench.py`, not used by the library.
"""

from __future__ import annotations


def load_data_function(raw_data: list[dict]) -> list[dict]:
    meta_data = []
    correct_sample_classification = "redundency"
    filter_dict = {}
    for item in raw_data:
        item_idx = item["idx"]
        classification = item["classification"]
        if classification == correct_sample_classification:
            correct_idx = f"correct_{item_idx}"
            if filter_dict.get(correct_idx) is None:
                meta_data.append(
                    dict(
                        idx=correct_idx,
                        question=item["original_question"],
                        steps=item["original_process"],
                        error_steps=[],
                        classification="correct",
                    )
                )
                filter_dict[correct_idx] = 1
        classification_idx = f"{classification}_{item_idx}"
        if filter_dict.get(classification_idx) is None:
            meta_data.append(
                dict(
                    idx=classification_idx,
                    question=item["modified_question"],
                    steps=item["modified_process"],
                    error_steps=item["error_steps"],
                    classification=classification,
                )
            )
            filter_dict[classification_idx] = 1
    return meta_data


def eval_on_hallucination_step(hallucination_steps, labels):
    hallucination_steps = [i - 1 for i in hallucination_steps]
    POSITIVE_LABEL = 1
    TP = FP = TN = FN = 0
    for idx in range(len(labels)):
        if idx in hallucination_steps:
            if labels[idx] == POSITIVE_LABEL:
                FP += 1
            else:
                TN += 1
        else:
            if labels[idx] == POSITIVE_LABEL:
                TP += 1
            else:
                FN += 1
    return dict(TP=TP, FP=FP, TN=TN, FN=FN)


def _f1s(m: dict) -> dict:
    TP, FP, FN, TN = m["TP"], m["FP"], m["FN"], m["TN"]
    precision = TP / (TP + FP) if (TP + FP) != 0 else -1
    recall = TP / (TP + FN) if (TP + FN) != 0 else -1
    f1 = 2 * precision * recall / (precision + recall) if (precision + recall) != 0 else -1
    negative_precision = TN / (TN + FN) if (TN + FN) != 0 else -1
    negative_recall = TN / (TN + FP) if (TN + FP) != 0 else -1
    negative_f1 = (
        2 * negative_precision * negative_recall / (negative_precision + negative_recall)
        if (negative_precision + negative_recall) != 0
        else -1
    )
    return dict(
        precision=precision,
        recall=recall,
        f1=f1,
        negative_precision=negative_precision,
        negative_recall=negative_recall,
        negative_f1=negative_f1,
    )


def evaluate_function(results: list[dict], meta_data: list[dict]) -> dict:
    meta_data_dict = {meta["idx"]: meta for meta in meta_data}
    classification_types = set(meta["classification"] for meta in meta_data)
    per_type = {i: dict(TP=0, FP=0, TN=0, FN=0) for i in classification_types}
    total = dict(TP=0, FP=0, TN=0, FN=0)
    correct_ids = {meta["idx"] for meta in meta_data if meta["classification"] == "correct"}
    for prediction in results:
        reference_item = meta_data_dict[prediction["idx"]]
        labels = prediction["scores"]["step_level_validity_labels"]
        counts = eval_on_hallucination_step(reference_item["error_steps"], labels)
        for key in counts:
            per_type[reference_item["classification"]][key] += counts[key]
            if prediction["idx"] not in correct_ids:  # the correct samples only count for their own type
                total[key] += counts[key]
    return dict(
        total_hallucination_results=_f1s(total),
        hallucination_type_results={k: _f1s(v) for k, v in per_type.items()},
    )


def get_prmscore(res_dict, classification=None):
    if not classification:
        r = res_dict["total_hallucination_results"]
        prm_score = r["f1"] * 0.5 + r["negative_f1"] * 0.5
    else:
        r = res_dict["hallucination_type_results"][classification]
        if classification in ["multi_solutions"]:
            prm_score = r["f1"]
        else:
            prm_score = r["f1"] * 0.5 + r["negative_f1"] * 0.5
    prm_score = prm_score if prm_score > 0 else 0
    return prm_score


def reference_prmbench(raw_data: list[dict], step_scores: dict[str, list[float]], validity_threshold=0.5) -> dict:
    """The toolkit's results on raw records, given each problem's step scores by its toolkit id."""
    meta_data = load_data_function(raw_data)
    results = [
        {
            "idx": meta["idx"],
            "scores": {"step_level_validity_labels": [s > validity_threshold for s in step_scores[meta["idx"]]]},
        }
        for meta in meta_data
    ]
    res = evaluate_function(results, meta_data)
    res["prm_score"] = get_prmscore(res)
    res["category_prm_score"] = {k: get_prmscore(res, k) for k in res["hallucination_type_results"]}
    res["meta_data"] = meta_data
    return res

import datasets

from bis_prm.data.arrow_utils import arrow_columns


def test_arrow_columns_follow_the_selection_across_chunks():
    parts = [datasets.Dataset.from_dict({"a": list(range(i, i + 5)), "b": [[i]] * 5}) for i in (0, 5, 10)]
    ds = datasets.concatenate_datasets(parts)
    assert ds.data.table.column("a").num_chunks == 3
    for indices in ([12, 0, 7, 3, 14], [1, 2, 6, 13], []):
        selected = ds.select(indices)
        table = arrow_columns(selected, ["b", "a"])
        assert table.column_names == ["b", "a"]
        assert table.column("a").to_pylist() == indices == selected["a"]
        assert table.column("b").to_pylist() == selected["b"]
    assert arrow_columns(ds, ["a"]).column("a").to_pylist() == list(range(15))

"""Re-export of [`bis_prm.io.jsonl`], where the JSONL reader shared by the data and evaluation rooms lives."""

from bis_prm.io.jsonl import UTF8_BOM, SkippedRows, encodes_as_utf8, iter_jsonl

__all__ = ["UTF8_BOM", "SkippedRows", "encodes_as_utf8", "iter_jsonl"]

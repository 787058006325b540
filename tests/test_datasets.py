"""Finding datasets, checking atomic files, and importing sequence files."""

from __future__ import annotations

import pytest

from bench.datasets import check_atomic_header, import_seqtxt, locate
from bench.errors import BenchError


def test_seqtxt_import_writes_time_ordered_atomic_file(tmp_path):
    source = tmp_path / "Beauty.txt"
    source.write_text("u1 10 11 12\nu2 11 13\n\n")
    target = import_seqtxt(source, "mini", tmp_path / "data")
    assert target == tmp_path / "data" / "mini" / "mini.inter"
    lines = target.read_text().splitlines()
    assert lines[0] == "user_id:token\titem_id:token\ttimestamp:float"
    assert lines[1:] == ["u1\t10\t0", "u1\t11\t1", "u1\t12\t2", "u2\t11\t0", "u2\t13\t1"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("u1 10 11\nu2\nu3 1 2\n", r"Beauty.txt:2: expected 'user item"),
        ("u1 10 11\nu1 12\n", r"Beauty.txt:2: user 'u1' already appeared on line 1"),
        ("\n\n", "no interactions found"),
    ],
)
def test_malformed_seqtxt_names_the_line_and_writes_nothing(tmp_path, content, message):
    source = tmp_path / "Beauty.txt"
    source.write_text(content)
    with pytest.raises(BenchError, match=message):
        import_seqtxt(source, "mini", tmp_path / "data")
    assert not (tmp_path / "data").exists()


def test_locate_prefers_data_dir_and_falls_back_to_the_wheel(tmp_path, monkeypatch):
    monkeypatch.delenv("BENCH_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert locate("ml-100k").source == "recbole wheel"
    (tmp_path / "mine" / "ml-100k").mkdir(parents=True)
    (tmp_path / "mine" / "ml-100k" / "ml-100k.inter").write_text("user_id:token\n")
    assert locate("ml-100k", tmp_path / "mine").source == "--data-dir"
    monkeypatch.setenv("BENCH_DATA_DIR", str(tmp_path / "mine"))
    assert locate("ml-100k").source == "BENCH_DATA_DIR"


def test_missing_dataset_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.delenv("BENCH_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        BenchError, match=r"looked for .*nowhere/amazon-beauty/amazon-beauty\.inter"
    ):
        locate("amazon-beauty", tmp_path / "nowhere", "Pass --data-dir.")


def test_header_check(tmp_path):
    path = tmp_path / "x.inter"
    path.write_text("user_id:token\titem_id:token\ttimestamp:float\n1\t2\t3\n")
    assert check_atomic_header(path, ["user_id", "item_id"]) == ["user_id", "item_id", "timestamp"]
    path.write_text("user_id item_id timestamp\n")
    with pytest.raises(BenchError, match="is not 'name:type'"):
        check_atomic_header(path, ["user_id"])
    path.write_text("user_id:token\titem_id:token\n")
    with pytest.raises(BenchError, match="lacks field.*timestamp"):
        check_atomic_header(path, ["user_id", "item_id", "timestamp"])

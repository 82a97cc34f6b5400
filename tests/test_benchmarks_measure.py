"""The model measurement benchmark: its arguments, tables and JSON output."""

import argparse
import json

import pytest

from benchmarks import measure_models


def test_pairs_parsed_and_checked():
    assert measure_models.parse_pairs("10:0.8,2:0.5") == [(10, 0.8), (2, 0.5)]
    assert measure_models.parse_pairs("") == []
    with pytest.raises(argparse.ArgumentTypeError, match="invalid pair '10-0.8': write WIDTH:RATIO"):
        measure_models.parse_pairs("10-0.8")


@pytest.mark.parametrize("argv,message", [
    (["--depth", "12"], "invalid WRN depth 12"),
    (["--widths", "0"], "invalid WRN width 0"),
    (["--pairs", "10:1.5"], "invalid pruning ratio 1.5"),
    (["--throughput-repeats", "0"], "--throughput-repeats must be >= 1, got 0"),
])
def test_bad_arguments_rejected(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        measure_models.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_tables_list_models_and_twin(tmp_path, capsys):
    output = tmp_path / "figures.json"
    argv = ["--depth", "10", "--widths", "1", "--pairs", "2:0.5", "--latency-repeats", "2",
            "--throughput-repeats", "1", "--json", str(output)]
    assert measure_models.main(argv) == 0
    text = capsys.readouterr().out
    assert text.startswith("command: python -m benchmarks.measure_models --depth 10 --widths 1")
    lines = text.splitlines()
    assert sum(line.lstrip().startswith("WRN-10-1 ") for line in lines) == 2
    twin_rows = [line.split() for line in lines if line.lstrip().startswith("WRN-10-2@0.5")]
    assert len(twin_rows) == 3
    assert twin_rows[-1][1:4] == ["78,106", "WRN-10-1", "77,850"]
    rows = json.loads(output.read_text())
    assert [r["name"] for r in rows] == ["WRN-10-1", "WRN-10-2@0.5"]
    assert rows[1]["twin"] == "WRN-10-1"
    assert rows[1]["params"] - rows[1]["native_params"] == 256

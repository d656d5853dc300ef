"""`bench threads`: tokens/s against CPU threads with spinning processes as busy cores; the spinners never outlive it."""

from __future__ import annotations

import json
import time

import pytest

from orthrus_min.bench.cli import main
from orthrus_min.bench.threads import busy_cores
from orthrus_helpers import orthrus_checkpoint


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return orthrus_checkpoint(tmp_path_factory.mktemp("threads") / "m")


def test_every_cell_is_measured_and_reported(model, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["threads", "--model", str(model), "--threads-list", "1,2", "--busy", "0,1", "--max-new-tokens", "4",
                 "--repeats", "1", "--block-size", "4", "--prompt", "def f(", "--out", str(out)]) == 0
    result = json.loads((out / "bench_threads.json").read_text())
    cells = [(r["busy_cores"], r["threads"]) for r in result["rows"]]
    assert cells == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert all(set(r["tokens_per_s"]) == {"ar", "orthrus"} and min(r["tokens_per_s"].values()) > 0 for r in result["rows"])
    assert result["default_threads_now"] == 1  # a tiny model: one thread, whatever the machine
    report = (out / "bench_threads.md").read_text()
    assert report.count("\n| 1 | 2 |") == 1 and "| busy cores | threads | ar tokens/s | orthrus tokens/s |" in report
    assert result["argv"][0] == "threads"


def test_spinners_stop_when_the_measurement_fails():
    with pytest.raises(RuntimeError):
        with busy_cores(2) as spinners:
            assert len(spinners) == 2 and all(p.is_alive() for p in spinners)
            raise RuntimeError("the measurement failed")
    deadline = time.monotonic() + 5
    while any(p.is_alive() for p in spinners) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(p.is_alive() for p in spinners)


@pytest.mark.parametrize("flag, value", [("--methods", "ar,draft"), ("--busy", "-1"), ("--threads-list", "0")])
def test_a_bad_list_is_one_error_line(flag, value, capsys):
    assert main(["threads", flag, value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and flag in err[0]

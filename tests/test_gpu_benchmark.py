"""``python tools/benchmark.py gpu``: the quick (CPU-size) run gives every key of the GPU table, and one failing or
late measurement loses nothing else."""
from __future__ import annotations

import json

import pytest

from maskdcpt.benchmarks import gpu


@pytest.mark.slow  # every measurement once at CPU size, the trainer run included
def test_quick_run_writes_every_key_of_the_table(tmp_path, capsys):
    assert gpu.main(["--quick", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu.json").read_text())
    results = report["results"]
    assert list(results) == gpu.expected_keys()
    assert {k: v["status"] for k, v in results.items() if v["status"] != "ok"} == {}
    assert results["environment"]["torch"] and results["environment"]["device"] == "cpu"
    assert results["anchor"]["fp32_batch16_img_per_s"] == 206.0 and results["anchor"]["bf16_batch64_img_per_s"] == 285.0
    for key, value in results.items():
        if key.startswith(("dense/", "maskdcpt/", "trainer/")):
            assert value["img_per_s"] > 0, key
        if key.startswith("degradations/") and key != "degradations/batch":
            assert value["samples_per_s"] > 0, key
    assert results["maskdcpt/nafnet/bf16/full"]["classifier_blocks"] == 2  # the release recipe's classifier
    assert results["dense/swinir/bf16/compiled"]["compiled"] == "eager"
    assert 0.0 <= results["trainer/nafnet"]["data_wait_fraction"] <= 1.0
    assert results["trainer/nafnet"]["types"] == 19  # the full mix
    table = capsys.readouterr().out
    assert all(f"| {key}" in table for key in results if key != "anchor")


def test_a_failure_or_an_exhausted_budget_is_recorded_and_the_rest_goes_on(tmp_path):
    cfg = gpu.make_config(tmp_path, quick=True, budget_s=60)
    report = gpu.Report(cfg)

    def broken():
        raise RuntimeError("CUDA error: an illegal memory access\nmore lines")

    report.measure("a", 60, broken)
    report.measure("b", 60, lambda: {"img_per_s": 1.0})
    report.started -= 100  # the budget is spent
    report.measure("c", 600, lambda: pytest.fail("must not run past the budget"))
    written = json.loads((tmp_path / "gpu.json").read_text())["results"]  # written after every measurement
    assert written == {"a": {"status": "error: RuntimeError: CUDA error: an illegal memory access"},
                       "b": {"status": "ok", "img_per_s": 1.0}, "c": {"status": "skipped: time budget"}}
    assert "illegal memory access" in (tmp_path / "errors.log").read_text()

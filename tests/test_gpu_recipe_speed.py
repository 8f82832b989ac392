"""benchmarks/gpu_recipe_speed.py runs (--quick, on the CPU, small networks) and writes its JSON."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
from conftest import REPO

from nayer_edge.distill.config import load_config


def _bench():
    spec = importlib.util.spec_from_file_location("gpu_recipe_speed", REPO / "benchmarks" / "gpu_recipe_speed.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_quick_run_on_the_cpu_writes_every_variant(tmp_path):
    out = tmp_path / "speed.json"
    record = _bench().main(["--quick", "--device", "cpu", "--teacher", "cnn_small", "--student", "cnn_tiny",
                            "--image-size", "16", "--variants", "fp32,bf16+channels_last", "--threads", "1",
                            "--repeats", "2", "--out", str(out)])
    assert json.loads(out.read_text()) == record and record["quick"] and record["device_type"] == "cpu"
    rows = {r["variant"]: r for r in record["variants"]}
    assert set(rows) == {"fp32", "bf16+channels_last"}
    assert rows["bf16+channels_last"]["amp"] == "bf16" and rows["bf16+channels_last"]["channels_last"] is True
    for row in rows.values():
        assert row["losses_finite"] and row["synthetic_images_per_s"] > 0 and row["kd_images_per_s"] > 0
        assert row["warmup_epoch_s"] > 0 and row["epoch_s"] > 0 and row["peak_gpu_memory_gib"] is None
        assert "projected_full_run_h" not in row  # never projected from the quick settings
        runs = record["runs"][row["variant"]]
        assert len(runs) == 2 and row["kd_images_per_s"] == pytest.approx(
            (runs[0]["kd_images_per_s"] + runs[1]["kd_images_per_s"]) / 2, abs=0.01)  # median of two


def test_projection_follows_the_recipe_schedule():
    bench = _bench()
    recipe = load_config("cifar10-resnet34-resnet18")  # 300 epochs, 20 of them warm-up
    row = bench.projection(recipe, warm_epoch_s=9.0, epoch_s=10.8)
    assert row["projected_full_run_h"] == pytest.approx((20 * 9.0 + 280 * 10.8) / 3600, abs=0.01)
    assert row["under_one_hour"] and row["paper_over_projected"] == pytest.approx(7.2 / 0.89, abs=0.1)
    with pytest.raises(SystemExit):
        bench.main(["--variants", "fp64", "--device", "cpu"])

"""benchmarks/input_pipeline.py --smoke: writes its photos, reads them through the real pipeline
with 0 and 1 worker processes and reports what it claims (tiny sizes; no timing asserted)."""
import json
import math
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_smoke_run_reports_every_set_and_worker_count(tmp_path):
    out = tmp_path / "pipeline.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "input_pipeline.py"), "--smoke",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["smoke"] is True and report["batch"] == 4
    assert report["sets"]["many_shapes"]["distinct_shapes"] == 4 and report["sets"]["one_shape"]["distinct_shapes"] == 1
    # the shapes' mean pixel count is the one shape's (within the rounding of each side)
    assert abs(report["sets"]["many_shapes"]["mean_pixels"] / report["sets"]["one_shape"]["mean_pixels"] - 1) < 0.01
    rows = {(r["set"], r["workers"]): r for r in report["rows"]}
    assert set(rows) == {(s, w) for s in ("many_shapes", "one_shape") for w in (0, 1)}
    for r in rows.values():
        assert r["images"] == 12 and r["seconds"] > 0
        assert math.isclose(r["images_per_s"], r["images"] / r["seconds"])
        assert r["seconds"] == min(r["seconds_of_each_pass"])
    for w in ("0", "1"):
        assert math.isclose(report["many_over_one"][w], rows["many_shapes", int(w)]["seconds"]
                            / rows["one_shape", int(w)]["seconds"])
    assert len(report["load_average_before"]) == 3 and "grain" in report["machine"]["versions"]
    assert "goals_met" not in report  # judged on the full run's two workers only


def test_photo_shapes_are_distinct_and_keep_the_mean_pixel_count():
    import importlib.util

    spec = importlib.util.spec_from_file_location("input_pipeline", os.path.join(ROOT, "benchmarks",
                                                                                 "input_pipeline.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    shapes = bench.photo_shapes(300)
    assert len(set(shapes)) == 300
    area = bench.ONE_SHAPE[0] * bench.ONE_SHAPE[1]
    assert abs(sum(h * w for h, w in shapes) / 300 / area - 1) < 0.01
    assert {h < w for h, w in shapes} == {True, False}  # landscape and portrait
    assert all(1.15 < max(h, w) / min(h, w) < 1.55 for h, w in shapes)

"""The benchmark command keeps working (its numbers are recorded by hand, never asserted)."""

from benchmarks.bench_erase import main


def test_tiny_benchmark_reports_every_phase():
    result = main(["--size", "tiny", "--num-images", "8", "--synthesis-steps", "2", "--steps", "3"])
    assert set(result["seconds"]) == {"data", "saliency", "unlearning", "save"}
    assert set(result["peak_memory_gib"]) == set(result["seconds"])
    assert result["steps_per_s"] > 0 and result["device"]


def test_tiny_benchmark_runs_esd_and_uce():
    esd = main(["--size", "tiny", "--method", "esd", "--steps", "3", "--synthesis-steps", "4"])
    assert set(esd["seconds"]) == {"data", "training", "save"} and esd["seconds_per_step"] > 0
    uce = main(["--size", "tiny", "--method", "uce"])
    assert set(uce["seconds"]) == {"edit", "save"}

"""The benchmark command keeps working (its numbers are recorded by hand, never asserted)."""

from benchmarks.bench_salun import main


def test_tiny_benchmark_reports_every_phase():
    result = main(["--size", "tiny", "--num-images", "8", "--synthesis-steps", "2", "--steps", "3"])
    assert set(result["seconds"]) == {"data", "saliency", "unlearning", "save"}
    assert set(result["peak_memory_gib"]) == set(result["seconds"])
    assert result["unlearning_steps_per_s"] > 0 and result["device"]

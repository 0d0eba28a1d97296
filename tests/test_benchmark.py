"""The benchmark command keeps working (its numbers are recorded by hand, never asserted)."""

from benchmarks import bench_attack, bench_generate, bench_optimizer, bench_seot, bench_uce_concepts
from benchmarks.bench_erase import main


def test_tiny_benchmark_reports_every_phase():
    result = main(["--size", "tiny", "--num-images", "8", "--synthesis-steps", "2", "--steps", "3",
                   "--synthesis-scheduler", "dpm"])
    assert set(result["seconds"]) == {"self_check", "data", "saliency", "unlearning", "save"}
    assert set(result["peak_memory_gib"]) == set(result["seconds"])
    assert result["steps_per_s"] > 0 and result["device"]
    assert result["settings_used"]["synthesis_scheduler"] == "dpm" and result["attention"] == ["AttnProcessor2_0"]
    assert 0 < result["optimizer_state_bytes"]["bytes"] < result["optimizer_state_bytes"]["dense_adam_bytes"]


def test_tiny_benchmark_runs_esd_and_uce():
    esd = main(["--size", "tiny", "--method", "esd", "--steps", "3", "--synthesis-steps", "4"])
    assert set(esd["seconds"]) == {"self_check", "data", "training", "save"} and esd["seconds_per_step"] > 0
    uce = main(["--size", "tiny", "--method", "uce"])
    assert set(uce["seconds"]) == {"self_check", "edit", "save"}
    many = bench_uce_concepts.main(["--size", "tiny", "--concepts", "3", "12", "--lora"])
    assert [row["erase_texts"] for row in many] == [3, 12] and all(row["seconds"]["edit"] > 0 for row in many)
    # each count's adapter is its own edit (from the base), exact, at rank ≤ its number of erase texts
    assert many[0]["lora"]["ranks"] == [3] and max(many[1]["lora"]["ranks"]) <= 12
    assert all(row["lora"]["max_weight_error"] <= 1e-5 and row["lora"]["adapter_bytes"] < row["lora"]["dense_bytes"]
               for row in many)


def test_tiny_optimizer_and_generation_benchmarks_run():
    optimizer = bench_optimizer.main(["--size", "tiny", "--steps", "1"])
    assert optimizer["masked"]["state_gib"] < optimizer["dense"]["state_gib"]
    generation = bench_generate.main(["--size", "tiny", "--prompts", "8", "--steps", "2", "--repeats", "1"])
    assert generation["images_per_s"]["harness"] > 0 and generation["versions"]["torch"]
    attack = bench_attack.main(["--size", "tiny", "--prompts", "1", "--steps", "4", "--check-every", "2",
                                "--num-inference-steps", "2"])
    assert attack["asr"] == 0 and attack["seconds_per_attacked_prompt"] > 0  # noise: the whole attack runs
    seot = bench_seot.main(["--size", "tiny", "--images", "2", "--steps", "5"])
    assert set(seot["images_per_s"]) == {"stock", "swr", "swr+ito"} and min(seot["images_per_s"].values()) > 0

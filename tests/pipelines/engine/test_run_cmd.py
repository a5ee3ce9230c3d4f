from pipelines.engine.run_cmd import format_results


def test_summary_shows_each_benchmarks_headline_and_skips():
    table = format_results({
        "evaluate.pope": {"status": "ran", "duration_s": 13.3,
                          "metrics": {"mean_f1": 66.66666, "parity_mismatches": 0, "status": "ok"}},
        "evaluate.mmvet": {"status": "ran", "duration_s": 0.0,
                           "metrics": {"status": "skipped", "reason": "no judge configured"}},
    })
    pope, mmvet = table.splitlines()[1:]
    assert "mean_f1=66.67" in pope and "status" not in pope
    assert mmvet.split()[:2] == ["evaluate.mmvet", "skipped"] and mmvet.endswith("skipped: no judge configured")

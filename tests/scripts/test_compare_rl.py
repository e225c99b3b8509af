"""The comparison script's table: means and sample stds over seeds and per-seed changes, on hand-made results."""

from jaxagents.scripts import compare_rl as compare


def _run(sampled_before, sampled_after, greedy_before, greedy_after, seconds):
  return {"after_sft": {"eval/sampled_reward": sampled_before, "eval/reward": greedy_before},
          "final": {"eval/sampled_reward": sampled_after, "eval/reward": greedy_after},
          "rl_seconds": seconds, "curve": []}


def test_table_reports_mean_and_sample_std_over_seeds_and_per_seed_changes():
  results = {
    0: {"grpo": _run(0.2, 0.3, 0.1, 0.2, 10.0), "pdcr": _run(0.2, 0.4, 0.1, 0.1, 20.0)},
    1: {"grpo": _run(0.4, 0.5, 0.3, 0.2, 30.0), "pdcr": _run(0.4, 0.4, 0.3, 0.5, 40.0)},
  }
  rows = compare.table(results, ["grpo", "pdcr"]).splitlines()
  assert len(rows) == 4  # header, rule, one row per method
  grpo = [cell.strip() for cell in rows[2].strip("|").split("|")]
  # sampled after SFT: mean(0.2, 0.4) = 0.3, sample std = |0.4 - 0.2| / sqrt(2) = 0.1414
  assert grpo == ["grpo", "2", "0.300 ± 0.141", "0.400 ± 0.141", "+0.100, +0.100",
                  "0.200 ± 0.141", "0.200 ± 0.000", "+0.100, -0.100", "20"]
  pdcr = [cell.strip() for cell in rows[3].strip("|").split("|")]
  assert pdcr[4] == "+0.200, +0.000" and pdcr[7] == "+0.000, +0.200" and pdcr[8] == "30"

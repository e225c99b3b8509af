"""Environments: tasks that generate prompts and verify completions, knowing no model.

An environment gives examples as a pure function of (seed, index), a tokenizer for its prompts and targets, and a
verifier (`reward`); a grain source serves its examples as records of numpy arrays. Turning prompts into a model's
inputs is the model's job (e.g. Qwen-VL's `token_batch` in `models/qwen_vl/batching.py`).

  base.py              the multi-turn interface: reset / step / parse_action / snapshot / restore, `EnvBatch`
  counting.py          count the shapes of one colour on a board (answer or per-row steps; exact-match reward)
  counting_export.py   the counting task written as dataset records (JSONL + PNGs, `data/vlm_records.py`)
  sokoban.py           multi-turn Sokoban on `base.Environment`: seeded reverse-play levels, text and RGB boards
  sokoban_solver.py    exact move-optimal Sokoban solver (A* over pushes, dead-square pruning)
  household.py         multi-turn ALFWorld-style text household: seeded rooms and goals, admissible commands, expert
"""

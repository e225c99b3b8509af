"""Dyna-Mind on Sokoban with a tiny text policy: ReSim SFT, then GRPO or Dyna-GRPO over multi-turn episodes.

    python -m jaxagents.train --config configs/agentic_sokoban.py --workdir runs/agentic_sokoban

Dyna-Mind (arXiv 2510.09577) trains an agent in two stages; here both run on the one loop as two phases of a
`CausalLM` reading `SokobanCodec` tokens:

  1. "sft" (stage 1, ReSim, Sec. 3.1, `envs.resim`): teacher-forced cross-entropy on the responses of ReSim
     examples from the training levels, each laid out as a window-mode training row of `generation.multi_turn`
     (prompt left-padded, then the response; the loss mask is exactly the response, the policy's tokens).
  2. "rl" (stage 2, Sec. 3.2): each step plays `rl.group_size` episodes of each of `rl.prompts_per_step` training
     levels with `multi_turn_rollout` (window mode with no history: the prompt is the current board, so it stays
     short) under the current parameters. Returns are Dyna-Mind's (`dyna_grpo.episode_returns`: -0.1 per
     non-terminal step, +10 on success), advantages GRPO's group z-score of the return, broadcast to every policy
     token of the episode (`step_values_to_tokens`), and the loss `grpo.grpo_loss` on log-probs recomputed by the
     training graph (the old log-probs are the parameters' own before the update, so the first update's ratio
     is 1).
     `rl.algorithm="dyna"` alternates (`dyna_grpo.dyna_phase`) that policy-improvement step with a simulation-
     improvement step (SimRollout): the same levels are played twice, standard episodes and refined ones. At each
     turn of a refined episode the policy samples a response a at s_t, the plan in it (`resim.refine_plan`, at
     most `max_plan_depth` actions) is executed in a clone of the real environment, giving s'_{t+1..t+k}, and
     a^refine is sampled from s_t^refine = s_t + a + s'_{t+1} + a_2 + ... (`dyna_grpo.refine_context`); the real
     environment steps with a^refine. Refined episodes get the binary, filtered advantage
     `dyna_grpo.dyna_refine_advantages` (1 if the episode succeeds and its return beats both the standard and
     the refined mean return of its level's group), broadcast to their a^refine tokens; only refined episodes
     are trained in that step.

Reconstructions (the paper's code is not available): the phase schedule (`rl.simulation_steps` simulation steps,
then `rl.policy_steps` policy steps, simulation first); a^refine trained against s_t (`rl.condition_on_future`
False, the default) or against s_t^refine; every turn of a refined episode is refined (not only its first); the
plan is read from the response's "plan" line (the answered action alone without one); old log-probs recomputed
rather than the sampler's (equal up to numerics for the standard turns; for a^refine trained against s_t, the
context it was sampled from differs, so the sampler's log-probs do not apply).

Held-out evaluation: greedy (temperature 0) episodes on `eval.levels` levels whose seeds start at
`eval.seed_offset` (never a training seed): "eval/success" (success rate), "eval/return" (mean episode return),
"eval/valid" (fraction of valid actions).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxagents.envs import resim, sokoban
from jaxagents.envs.base import EnvBatch
from jaxagents.envs.sokoban_codec import InteriorSokoban, SokobanCodec
from jaxagents.generation import SamplingConfig, TokenInputs, generate, multi_turn_rollout, step_values_to_tokens
from jaxagents.models.causal_lm import CausalLM, CausalLMConfig
from jaxagents.rl import dyna_grpo, grpo
from jaxagents.tasks import config_checks, rollouts, vlm_sft
from jaxagents.tasks.base import Phase
from jaxagents.tasks.grpo import policy_update

ALGORITHMS = ("grpo", "dyna")
OBSERVATION_TEMPLATE = "{observation}\n"


def _bucket_rows(count: int) -> int:
  """Rows padded to a power of two, at least 8 (one compiled update per bucket; divisible by 8 devices)."""
  return max(1 << max(count - 1, 0).bit_length(), 8)


def _round_up(n: int, multiple: int) -> int:
  return max(-(-n // multiple), 1) * multiple


def training_batch(prompts, responses, token_advantages, prompt_length: int, response_length: int, pad_id: int):
  """Window-layout rows (prompt left-padded to `prompt_length`, response, as `multi_turn` lays them out), padded
  to `_bucket_rows` rows (padding rows: one pad token, no policy tokens).

  prompts, responses: lists of int arrays; token_advantages: one float per row (its episode's advantage).
  Returns {"inputs", "completion_mask", "advantages" [R, prompt_length + response_length]}.
  """
  rows = _bucket_rows(len(prompts))
  ids = np.full((rows, prompt_length), pad_id, np.int32)
  mask = np.zeros((rows, prompt_length), np.int32)
  mask[:, -1] = 1
  tokens = np.full((rows, response_length), pad_id, np.int32)
  lengths = np.zeros(rows, np.int32)
  values = np.zeros(rows, np.float32)
  for row, (prompt, response, value) in enumerate(zip(prompts, responses, token_advantages, strict=True)):
    n, m = len(prompt), len(response)
    if n > prompt_length or m > response_length:
      raise ValueError(f"prompt_length/response_length: row {row} needs {n}/{m} tokens, got "
                       f"{prompt_length}/{response_length}")
    mask[row, -1] = 0
    ids[row, prompt_length - n:], mask[row, prompt_length - n:] = prompt, 1
    tokens[row, :m], lengths[row], values[row] = response, m, value
  inputs, completion_mask = TokenInputs.from_ids(ids, mask).with_completions(tokens, lengths, pad_id)
  completion_mask = np.asarray(completion_mask)
  return {"inputs": inputs, "completion_mask": completion_mask,
          "advantages": np.where(completion_mask, values[:, None], 0.0).astype(np.float32)}


class _Records:
  """Random-access records for the loop's grain pipeline (a dict of equal-length arrays, one record per row)."""

  def __init__(self, arrays: dict[str, np.ndarray]):
    self.arrays = arrays
    self.size = len(next(iter(arrays.values())))

  def __len__(self) -> int:
    return self.size

  def __getitem__(self, index):
    if not 0 <= int(index) < self.size:
      raise IndexError(f"index {index} out of range for {self.size} records")
    return {key: value[int(index)] for key, value in self.arrays.items()}


def check_config(config) -> None:
  config_checks.non_negative(config, "sft.steps", "rl.steps", "resim.random_walks")
  config_checks.positive(config, "sft.batch_size", "rl.prompts_per_step", "rl.group_size", "rl.updates_per_batch",
                         "rl.max_new_tokens", "eval.levels", "resim.levels", "resim.plan_depth", "prompt_length")
  config_checks.number(config, "rl.temperature", low=0.0)
  if config.rl.algorithm not in ALGORITHMS:
    raise ValueError(f"config.rl.algorithm: expected one of {ALGORITHMS}, got {config.rl.algorithm!r}.")
  for name in ("sft", "rl"):
    vlm_sft.check_schedule(config, name)


class AgenticRL:
  """ReSim SFT, then GRPO or Dyna-GRPO on Sokoban episodes (module docstring)."""

  plot_file = "success.png"
  plot_keys = ("sft/loss", "rollout/success", "eval/success", "eval/return")
  progress_keys = ("sft/loss", "rollout/success")
  summary_keys = ("eval/success", "eval/return")

  def __init__(self, config):
    check_config(config)
    self.config = config
    rl = config.rl
    self.env_config = sokoban.SokobanConfig(**{**dict(config.env), "render_image": False})
    self.codec = SokobanCodec()
    self.model_config = CausalLMConfig(vocab_size=self.codec.vocab_size, **dict(config.model))
    self.model = CausalLM(self.model_config)
    self.sampling = SamplingConfig(rl.max_new_tokens, temperature=rl.temperature, eos_ids=(self.codec.eos_id,),
                                   pad_id=self.codec.pad_id, suppress_ids=(self.codec.pad_id,))
    self.loss_config = grpo.grpo_config(**dict(rl.loss))
    self.dyna = dyna_grpo.DynaGRPOConfig(simulation_steps=rl.get("simulation_steps", 1),
                                         policy_steps=rl.get("policy_steps", 1),
                                         condition_on_future=rl.get("condition_on_future", False),
                                         max_plan_depth=rl.get("max_plan_depth", 5))
    self.prompt_length = config.prompt_length
    self.phases = (
      Phase("sft", config.sft.steps, config.sft.batch_size, optimizer="sft", eval_every=0),
      Phase("rl", rl.steps, rl.prompts_per_step, optimizer="rl", updates_per_batch=rl.updates_per_batch),
    )
    self._optimizers = {"sft": vlm_sft.phase_optimizer(config.sft, config.sft.steps),
                        "rl": vlm_sft.phase_optimizer(rl, rl.steps, rl.updates_per_batch)}
    self._sft_records = None

  # -- state -------------------------------------------------------------------------------------------------------
  def init(self, rng):
    tokens = jnp.zeros((1, self.prompt_length), jnp.int32)
    params = self.model.init(rng, tokens)["params"]
    return {"params": params, "ref_params": params} if self.loss_config.beta > 0 else {"params": params}

  def optimizers(self):
    return self._optimizers

  def begin_phase(self, state, phase):
    if phase.name != "rl" or "ref_params" not in state:
      return state
    return {**state, "ref_params": jax.tree.map(jnp.copy, state["params"])}  # the frozen reference

  def sft_records(self) -> dict[str, np.ndarray]:
    """The ReSim examples of the training levels (seeds 0 .. resim.levels - 1), built once."""
    if self._sft_records is None:
      r = self.config.resim
      states = resim.collect_states(self.env_config, range(r.levels), random_walks=r.random_walks,
                                    walk_length=r.get("walk_length", 3), seed=self.config.seed)
      examples = resim.sft_examples(states, self.codec, self.env_config, observation_template=OBSERVATION_TEMPLATE,
                                    depth=r.get("depth", 1), plan_depth=r.plan_depth)
      self._sft_records = resim.sft_records(examples, self.prompt_length, self.config.rl.max_new_tokens,
                                            self.codec.pad_id)
    return self._sft_records

  def source(self, phase):
    if phase.name == "sft":
      return _Records(self.sft_records())
    return _Records({"seed": np.arange(self.config.resim.levels, dtype=np.int64)})

  def resumable(self, step: int) -> tuple[str, ...]:
    return ("rl",) if step <= self.config.sft.steps else ()

  # -- rollouts ----------------------------------------------------------------------------------------------------
  def _make_env(self):
    return InteriorSokoban(self.env_config)

  def play(self, params, seeds, key, sampling=None):
    """Standard window-mode episodes, one per seed (`multi_turn_rollout`)."""
    sampling = sampling or self.sampling
    envs = EnvBatch(self._make_env, len(seeds))
    return multi_turn_rollout(self.model, {"params": params}, envs, seeds, self.codec, mode="window", history=0,
                              max_turns=self.env_config.max_steps, sampling=sampling, key=key, instructions="",
                              observation_template=OBSERVATION_TEMPLATE, length_multiple=self.prompt_length,
                              min_rows=_bucket_rows(len(seeds)))

  def _sample(self, params, prompts, key):
    """One `generate` call on right-padded prompts (rows and length bucketed); host (token lists, texts)."""
    rows = _bucket_rows(len(prompts))
    length = _round_up(max(len(p) for p in prompts), self.prompt_length)
    ids = np.full((rows, length), self.codec.pad_id, np.int32)
    mask = np.zeros((rows, length), np.int32)
    mask[len(prompts):, 0] = 1
    for row, prompt in enumerate(prompts):
      ids[row, :len(prompt)], mask[row, :len(prompt)] = prompt, 1
    out = generate(self.model, {"params": params}, TokenInputs.from_ids(ids, mask), sampling=self.sampling, key=key)
    tokens, lengths = (np.asarray(x) for x in jax.device_get((out.tokens, out.lengths)))
    responses = [tokens[row, :lengths[row]].astype(np.int32) for row in range(len(prompts))]
    stop = {self.codec.eos_id, self.codec.pad_id}
    return responses, [self.codec.decode([int(t) for t in r if int(t) not in stop]) for r in responses]

  def play_refined(self, params, seeds, key):
    """Refined episodes (SimRollout, module docstring): per turn, a at s_t, its plan executed in a clone, a^refine
    from s_t^refine steps the real environment. Returns (num_steps [E], success [E], rows), one row per turn played:
    (episode, s_t prompt ids, s_t^refine prompt ids, a^refine ids)."""
    envs = [self._make_env() for _ in seeds]
    observations = [env.reset(int(seed)).text for env, seed in zip(envs, seeds, strict=True)]
    num_steps = np.zeros(len(envs), np.int32)
    rows = []
    encode = lambda text: np.asarray(self.codec.encode(text), np.int32)
    newline = encode("\n")
    for _ in range(self.env_config.max_steps):
      active = [i for i, env in enumerate(envs) if not env.done]
      if not active:
        break
      key, first_key, refine_key = jax.random.split(key, 3)
      state_prompts = [encode(OBSERVATION_TEMPLATE.format(observation=observations[i])) for i in active]
      first_ids, first = self._sample(params, state_prompts, first_key)
      refine_prompts = []
      for row, i in enumerate(active):
        plan = resim.refine_plan(first[row], self.dyna.max_plan_depth)
        clone, futures = envs[i].clone(), []
        for action in plan:
          if clone.done:
            break
          clone.step(action)
          futures.append(clone.observe().text)
        # s_t^refine as `dyna_grpo.refine_context` joins it, built from token pieces: the sampled response keeps
        # its ids (a decoded sample need not re-encode to the same tokens), the rest is encoded piece by piece.
        response = first_ids[row][~np.isin(first_ids[row], (self.codec.eos_id, self.codec.pad_id))]
        pieces = [encode(observations[i]), response]
        for k, future in enumerate(futures):
          pieces += [encode(plan[k])] if k else []
          pieces.append(encode(future))
        refine_prompts.append(np.concatenate([x for piece in pieces for x in (piece, newline)]))
      refined_ids, refined = self._sample(params, refine_prompts, refine_key)
      for row, i in enumerate(active):
        result = envs[i].step(envs[i].parse_action(refined[row]))
        num_steps[i] += 1
        rows.append((i, state_prompts[row], refine_prompts[row], refined_ids[row]))
        observations[i] = result.observation.text
    success = np.array([env.success for env in envs])
    return num_steps, success, rows

  # -- host side ---------------------------------------------------------------------------------------------------
  def prepare(self, state, records, rng, phase):
    if phase.name == "sft":
      inputs, completion_mask = TokenInputs.from_ids(records["prompt"], records["prompt_mask"]).with_completions(
        records["response"], records["response_length"], self.codec.pad_id)
      return {"inputs": inputs, "completion_mask": np.asarray(completion_mask)}, {}
    rl = self.config.rl
    group = rl.group_size
    seeds = np.repeat(np.asarray(records["seed"]), group)
    group_ids = np.repeat(np.arange(len(records["seed"])), group)
    params = state["params"]
    standard_key, refine_key = jax.random.split(rng)
    rl_step = int(jax.device_get(state["step"])) - self.config.sft.steps
    mode = "policy"
    if rl.algorithm == "dyna":
      mode = dyna_grpo.dyna_phase(rl_step, simulation_steps=self.dyna.simulation_steps,
                                  policy_steps=self.dyna.policy_steps)
    out = self.play(params, seeds, standard_key)
    returns = np.asarray(dyna_grpo.episode_returns(np.maximum(out.num_turns, 1), out.success))
    metrics = {"rollout/success": float(out.success.mean()), "rollout/return": float(returns.mean()),
               "rollout/valid": float(out.valid[out.step_mask].mean()) if out.step_mask.any() else 0.0,
               "rollout/turns": float(out.num_turns.mean()), "dyna/simulation": float(mode == "simulation")}
    if mode == "policy":
      advantages = np.asarray(dyna_grpo.policy_advantages(returns, group_ids))
      step_values = np.repeat(advantages[:, None], out.step_mask.shape[1], axis=1)
      training = out.training
      token_values = step_values_to_tokens(training, step_values)
      prompts, responses, values = self._rows_from_training(training, token_values)
    else:
      num_steps, success, refined_rows = self.play_refined(params, seeds, refine_key)
      refine_returns = np.asarray(dyna_grpo.episode_returns(np.maximum(num_steps, 1), success))
      advantages = np.asarray(dyna_grpo.dyna_refine_advantages(success, returns, refine_returns, group_ids))
      # a^refine is trained against s_t, or against s_t^refine (`dyna_grpo.refine_training_prompt`'s choice)
      prompts = [refine if self.dyna.condition_on_future else plain for _, plain, refine, _ in refined_rows]
      responses = [response for *_, response in refined_rows]
      values = [advantages[episode] for episode, *_ in refined_rows]
      metrics.update({"refine/success": float(success.mean()), "refine/return": float(refine_returns.mean()),
                      "refine/positive": float(advantages.mean())})
    prompt_length = _round_up(max(len(p) for p in prompts), self.prompt_length)
    batch = training_batch(prompts, responses, values, prompt_length, rl.max_new_tokens, self.codec.pad_id)
    old_logp, _ = rollouts.recompute_logprobs({"params": params}, batch["inputs"], batch["completion_mask"],
                                              model=self.model, sampling=self.sampling)
    batch["old_logp"] = old_logp
    if "ref_params" in state:
      batch["ref_logp"], _ = rollouts.recompute_logprobs({"params": state["ref_params"]}, batch["inputs"],
                                                         batch["completion_mask"], model=self.model,
                                                         sampling=self.sampling)
    return batch, metrics

  @staticmethod
  def _rows_from_training(training, token_values):
    """(prompt ids, response ids, advantage) per window row of a `multi_turn` record."""
    ids = np.asarray(training.inputs.input_ids)
    attention = np.asarray(training.inputs.attention_mask).astype(bool)
    policy = np.asarray(training.policy_mask)
    prompts, responses, values = [], [], []
    for row in range(ids.shape[0]):
      prompt_part = attention[row] & ~policy[row]
      prompts.append(ids[row][prompt_part])
      responses.append(ids[row][policy[row]])
      values.append(float(token_values[row][policy[row]][0]) if policy[row].any() else 0.0)
    return prompts, responses, values

  # -- the jitted update -------------------------------------------------------------------------------------------
  def update(self, state, batch, rng, phase):
    del rng
    name = phase.optimizer
    if phase.name == "sft":
      return vlm_sft.sft_update(self.model, state, batch, name, self._optimizers[name])
    return policy_update(self.model, self.sampling, self.loss_config, state, batch, name, self._optimizers[name])

  # -- held-out evaluation -----------------------------------------------------------------------------------------
  def evaluate(self, state, step):
    del step
    seeds = self.config.eval.seed_offset + np.arange(self.config.eval.levels)
    greedy = dataclasses.replace(self.sampling, temperature=0.0)
    out = self.play(state["params"], seeds, jax.random.key(0), sampling=greedy)
    returns = np.asarray(dyna_grpo.episode_returns(np.maximum(out.num_turns, 1), out.success))
    valid = float(out.valid[out.step_mask].mean()) if out.step_mask.any() else 0.0
    return {"eval/success": float(out.success.mean()), "eval/return": float(returns.mean()), "eval/valid": valid}


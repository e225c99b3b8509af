"""RL post-training: GRPO-family losses and advantages (`grpo`), KL estimators (`kl`), Dyna-GRPO (`dyna_grpo`),
GiGPO step-level advantages (`gigpo`), PDCR advantages (`pdcr`), VGS losses and gradient steering (`vgs`),
verifiable and Argos-style rewards (`rewards`, `argos`) and rewards chosen by name in a config (`named_rewards`).
The jobs that use them are tasks (`jaxagents/tasks/`)."""

from jaxagents.rl import advantages, argos, dyna_grpo, gigpo, grpo, kl, named_rewards, pdcr, rewards, vgs

__all__ = ["advantages", "argos", "dyna_grpo", "gigpo", "grpo", "kl", "named_rewards", "pdcr", "rewards", "vgs"]

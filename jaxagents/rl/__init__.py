"""RL post-training: GRPO-family losses and advantages (`grpo`), KL estimators (`kl`), Dyna-GRPO (`dyna_grpo`),
PDCR advantages (`pdcr`), VGS losses and gradient steering (`vgs`), verifiable and Argos-style rewards
(`rewards`), and the post-training job (`trainer`, imported on demand: it pulls in the models)."""

from jaxagents.rl import advantages, argos, dyna_grpo, grpo, kl, pdcr, rewards, vgs

__all__ = ["advantages", "argos", "dyna_grpo", "grpo", "kl", "pdcr", "rewards", "vgs"]

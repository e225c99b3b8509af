"""VGS (jaxagents/rl/vgs.py): the distillation terms against float64 numpy references and TRL's
`generalized_jsd_loss(beta=1)` re-written in torch; the steering rule and transform on constructed gradients
(hand-worked cases); `two_grads` against two separate `jax.grad` calls."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxagents.rl import vgs

_vgs_terms = jax.jit(vgs.vgs_terms, static_argnames=("quantile", "low_quantile", "agg", "token_chunk"))


def _logits(seed, shape=(3, 5, 7), scale=2.0):
  rng = np.random.default_rng(seed)
  return [(scale * rng.standard_normal(shape)).astype(np.float32) for _ in range(4)]


def _mask():
  return np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], bool)  # the last row is all padding


# ---------------------------------------------------------------- float64 references


def _log_softmax(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _kl(log_p, log_q):
  return (np.exp(log_p) * (log_p - log_q)).sum(-1)


def _ref_terms(s_img, s_txt, t_img, t_txt, mask, quantile=0.7):
  """Per token: KLs, the q* target built token by token, the VDS gate by numpy's (linear) quantile."""
  batch, length, _ = s_img.shape
  kl = {name: np.zeros((batch, length)) for name in ("std", "vis", "lang", "vds")}
  for b in range(batch):
    for t in range(length):
      ls_img, ls_txt = _log_softmax(s_img[b, t]), _log_softmax(s_txt[b, t])
      lt_img, lt_txt = _log_softmax(t_img[b, t]), _log_softmax(t_txt[b, t])
      unnormalised = np.exp(ls_txt) * np.exp(lt_img) / np.exp(lt_txt)
      log_target = np.log(unnormalised / unnormalised.sum())
      kl["std"][b, t] = _kl(ls_img, lt_img)
      kl["vis"][b, t] = _kl(ls_img, log_target)
      kl["lang"][b, t] = _kl(ls_txt, lt_txt)
      kl["vds"][b, t] = _kl(lt_img, lt_txt)
  threshold = np.quantile(kl["vds"][mask], quantile)
  gate = mask & (kl["vds"] > threshold)

  def seq_mean(per_token):
    rows = [per_token[b][mask[b]].sum() / mask[b].sum() for b in range(batch) if mask[b].any()]
    return float(np.mean(rows))

  return {
    "std": seq_mean(kl["std"]), "vis": seq_mean(kl["vis"]), "lang": seq_mean(kl["lang"]),
    "lp": seq_mean(np.where(gate, kl["lang"], 0.0)), "kl": kl, "gate": gate, "threshold": threshold,
  }


def _trl_generalized_jsd_beta1(student_logits, teacher_logits, labels):
  """TRL `GKDTrainer.generalized_jsd_loss(beta=1, temperature=1, reduction="batchmean")`, re-written in torch."""
  torch = pytest.importorskip("torch")
  f = torch.nn.functional
  student_log_probs = f.log_softmax(torch.as_tensor(student_logits), dim=-1)
  teacher_log_probs = f.log_softmax(torch.as_tensor(teacher_logits), dim=-1)
  jsd = f.kl_div(teacher_log_probs, student_log_probs, reduction="none", log_target=True)
  mask = torch.as_tensor(labels) != -100
  return float(jsd[mask].sum() / mask.sum())


# ---------------------------------------------------------------- loss terms


def test_standard_term_matches_trl_generalized_jsd_beta_one():
  s_img, _, t_img, _ = _logits(0)
  mask = _mask()
  labels = np.where(mask, 1, -100)
  expected = _trl_generalized_jsd_beta1(s_img, t_img, labels)
  terms = _vgs_terms(s_img, s_img, t_img, t_img, mask, agg="token_mean")
  np.testing.assert_allclose(terms["std"], expected, rtol=1e-5)
  # One rollout: the paper's per-rollout mean equals TRL's token mean.
  one = _vgs_terms(s_img[:1], s_img[:1], t_img[:1], t_img[:1], mask[:1])
  np.testing.assert_allclose(one["std"], _trl_generalized_jsd_beta1(s_img[:1], t_img[:1], labels[:1]), rtol=1e-5)
  np.testing.assert_allclose(vgs.reverse_kl(s_img, t_img)[mask].mean(), expected, rtol=1e-5)


def test_terms_match_float64_reference():
  s_img, s_txt, t_img, t_txt = _logits(1)
  mask = _mask()
  terms = _vgs_terms(s_img, s_txt, t_img, t_txt, mask)
  ref = _ref_terms(s_img, s_txt, t_img, t_txt, mask)
  for name in ("std", "vis", "lang", "lp"):
    np.testing.assert_allclose(terms[name], ref[name], rtol=1e-5, err_msg=name)
  for name in ("std", "vis", "lang", "vds"):
    np.testing.assert_allclose(terms[f"kl_{name}" if name != "vds" else "vds"], np.where(mask, ref["kl"][name], 0),
                               rtol=1e-4, atol=1e-6, err_msg=name)
  np.testing.assert_allclose(terms["vds_threshold"], ref["threshold"], rtol=1e-5)
  np.testing.assert_array_equal(terms["gate"], ref["gate"])


def test_divergences_are_nonnegative():
  for seed in range(3):
    terms = _vgs_terms(*_logits(seed, scale=4.0), np.ones((3, 5), bool))
    for name in ("kl_std", "kl_vis", "kl_lang", "vds"):
      assert (np.asarray(terms[name]) >= 0).all(), name


def test_visual_term_vanishes_when_student_and_teacher_visual_gains_agree():
  s_img, s_txt, t_img, t_txt = _logits(2)
  shift = np.random.default_rng(9).standard_normal((3, 5, 1)).astype(np.float32)  # a per-position constant
  s_img = s_txt + (t_img - t_txt) + shift
  terms = _vgs_terms(s_img, s_txt, t_img, t_txt, np.ones((3, 5), bool))
  np.testing.assert_allclose(terms["vis"], 0.0, atol=1e-6)
  assert float(terms["std"]) > 1e-3  # the standard term does not vanish, so the check is not trivial


def test_teacher_ignoring_image_gives_zero_vds_and_no_gate():
  s_img, s_txt, t_img, _ = _logits(3)
  terms = _vgs_terms(s_img, s_txt, t_img, t_img, _mask())
  assert float(jnp.max(terms["vds"])) == 0.0
  assert not np.asarray(terms["gate"]).any()
  assert float(terms["lp"]) == 0.0


def test_gate_selects_top_thirty_percent_by_linear_quantile():
  s_img, s_txt, t_img, t_txt = _logits(4, shape=(4, 5, 6))
  terms = _vgs_terms(s_img, s_txt, t_img, t_txt, np.ones((4, 5), bool))
  # 20 distinct scores: np.quantile(·, 0.7) sits between the 14th and 15th, so exactly 6 (30%) lie above.
  assert int(np.asarray(terms["gate"]).sum()) == 6
  np.testing.assert_allclose(terms["vds_threshold"], np.quantile(np.asarray(terms["vds"]), 0.7), rtol=1e-6)


@pytest.mark.parametrize("q", [0.0, 0.4, 0.7, 1.0])
def test_masked_quantile_matches_numpy_linear(q):
  rng = np.random.default_rng(5)
  values, mask = rng.standard_normal((4, 6)), rng.random((4, 6)) < 0.6
  quantile = jax.jit(vgs.masked_quantile, static_argnames="q")
  np.testing.assert_allclose(quantile(values, mask, q=q), np.quantile(values[mask], q), rtol=1e-6)
  assert np.isinf(quantile(values, np.zeros_like(mask), q=q))


def test_quantile_scope_and_threshold_override():
  s_img, s_txt, t_img, t_txt = _logits(6)
  mask = np.ones((3, 5), bool)
  scope = np.zeros((3, 5), bool)
  scope[0] = True
  terms = _vgs_terms(s_img, s_txt, t_img, t_txt, mask, quantile_scope_mask=scope)
  vds = np.asarray(terms["vds"])
  np.testing.assert_allclose(terms["vds_threshold"], np.quantile(vds[0], 0.7), rtol=1e-6)
  np.testing.assert_array_equal(terms["gate"], vds > np.quantile(vds[0], 0.7))
  fixed = _vgs_terms(s_img, s_txt, t_img, t_txt, mask, vds_threshold=float(np.median(vds)))
  np.testing.assert_array_equal(fixed["gate"], vds > np.float32(np.median(vds)))


def test_visual_term_gradient_does_not_flow_into_text_only_student_or_teacher():
  s_img, s_txt, t_img, t_txt = _logits(7)
  mask = _mask()

  def visual(s_img, s_txt, t_img, t_txt):
    return vgs.vgs_terms(s_img, s_txt, t_img, t_txt, mask)["vis"]

  grads = jax.jit(jax.grad(visual, argnums=(0, 1, 2, 3)))(s_img, s_txt, t_img, t_txt)
  assert float(jnp.abs(grads[0]).max()) > 1e-4
  for g in grads[1:]:
    assert float(jnp.abs(g).max()) == 0.0


def test_token_chunking_matches_unchunked_values_and_gradients():
  s_img, s_txt, t_img, t_txt = _logits(8)
  mask = _mask()

  def loss(s_img, s_txt, chunk):
    terms = vgs.vgs_terms(s_img, s_txt, t_img, t_txt, mask, token_chunk=chunk)
    return vgs.vgs_loss(terms, gamma=2.0, lam=0.5)

  full = jax.jit(jax.value_and_grad(lambda a, b: loss(a, b, None), argnums=(0, 1)))(s_img, s_txt)
  chunked = jax.jit(jax.value_and_grad(lambda a, b: loss(a, b, 4), argnums=(0, 1)))(s_img, s_txt)
  np.testing.assert_allclose(chunked[0], full[0], rtol=1e-6)
  for a, b in zip(chunked[1], full[1]):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_vgs_loss_combines_terms_and_adaptive_gamma_follows_quantiles():
  s_img, s_txt, t_img, t_txt = _logits(9)
  mask = _mask()
  terms = _vgs_terms(s_img, s_txt, t_img, t_txt, mask)
  ref = _ref_terms(s_img, s_txt, t_img, t_txt, mask)
  loss = vgs.vgs_loss(terms, gamma=2.0, lam=0.01, eta=0.41)
  np.testing.assert_allclose(loss, 0.41 * (ref["std"] + 2.0 * ref["vis"] + 0.01 * ref["lp"]), rtol=1e-5)
  vds = ref["kl"]["vds"]
  q40, q70 = np.quantile(vds[mask], 0.4), np.quantile(vds[mask], 0.7)
  gamma_t = np.where(vds > q70, 2.0, np.where(vds > q40, 1.0, 0.0))
  rows = [(gamma_t * ref["kl"]["vis"])[b][mask[b]].mean() for b in range(3) if mask[b].any()]
  expected = ref["std"] + np.mean(rows) + 0.01 * ref["lp"]
  np.testing.assert_allclose(vgs.vgs_loss(terms, gamma=2.0, lam=0.01, adaptive=True), expected, rtol=1e-5)


def test_all_padding_batch_gives_finite_zero_losses_and_no_gate():
  s_img, s_txt, t_img, t_txt = _logits(10)
  mask = np.zeros((3, 5), bool)
  terms = _vgs_terms(s_img, s_txt, t_img, t_txt, mask)
  for name in ("std", "vis", "lang", "lp"):
    assert float(terms[name]) == 0.0, name
  assert not np.asarray(terms["gate"]).any()
  grads = jax.jit(jax.grad(lambda s: vgs.vgs_loss(vgs.vgs_terms(s, s_txt, t_img, t_txt, mask))))(s_img)
  assert np.isfinite(np.asarray(grads)).all()


def test_banned_vocabulary_entries_drop_out_and_give_no_nan():
  s_img, s_txt, t_img, t_txt = _logits(11)
  banned = [x.copy() for x in (s_img, s_txt, t_img, t_txt)]
  for x in banned:
    x[..., 0] = -np.inf  # a padded or banned entry, masked in every view
  terms = _vgs_terms(*banned, _mask())
  trimmed = _vgs_terms(s_img[..., 1:], s_txt[..., 1:], t_img[..., 1:], t_txt[..., 1:], _mask())
  for name in ("std", "vis", "lang", "lp"):
    np.testing.assert_allclose(terms[name], trimmed[name], rtol=1e-6, err_msg=name)
  grads = jax.jit(jax.grad(lambda s: vgs.vgs_loss(vgs.vgs_terms(s, *banned[1:], _mask()), lam=1.0)))(banned[0])
  assert np.isfinite(np.asarray(grads)).all()
  t_txt_only = t_txt.copy()
  t_txt_only[..., 1] = -np.inf  # the text-only teacher alone rules a token out: large but finite terms
  terms = _vgs_terms(s_img, s_txt, t_img, t_txt_only, _mask())
  assert all(np.isfinite(np.asarray(terms[name])) for name in ("std", "vis", "lang", "lp"))


def test_terms_reject_bad_shapes():
  s_img, s_txt, t_img, t_txt = _logits(12)
  with pytest.raises(ValueError, match="t_txt"):
    vgs.vgs_terms(s_img, s_txt, t_img, t_txt[:, :4], _mask())
  with pytest.raises(ValueError, match="mask"):
    vgs.vgs_terms(s_img, s_txt, t_img, t_txt, _mask()[:, :4])
  with pytest.raises(ValueError, match="agg"):
    vgs.vgs_terms(s_img, s_txt, t_img, t_txt, _mask(), agg="sum")


# ---------------------------------------------------------------- steering rule and transform


def _flat(tree):
  return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)]).astype(np.float64)


def _cos(a, b):
  return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _random_grads(seed):
  rng = np.random.default_rng(seed)
  shapes = {"dense": {"kernel": (3, 4), "bias": (4,)}, "head": (5,)}

  def make():
    is_shape = lambda x: isinstance(x, tuple)  # noqa: E731
    return jax.tree.map(lambda s: rng.standard_normal(s).astype(np.float32), shapes, is_leaf=is_shape)

  return make(), make()


def test_orthogonal_gradients_are_steered_to_the_standard_norm():
  out, stats = vgs.steer_gradients(np.array([3.0, 0.0]), np.array([0.0, 1.5]), gamma=2.0)
  np.testing.assert_allclose(stats["eta"], 1 / np.sqrt(2), rtol=1e-6)
  np.testing.assert_allclose(out, [2.1213203, 2.1213203], rtol=1e-6)


def test_dynamic_eta_preserves_norm_and_direction_of_combined_gradient():
  g_std, g_vis = _random_grads(0)
  out, _ = vgs.steer_gradients(g_std, g_vis, gamma=2.0)
  assert jax.tree.structure(out) == jax.tree.structure(g_std)
  flat_out, flat_std, flat_vis = _flat(out), _flat(g_std), _flat(g_vis)
  np.testing.assert_allclose(np.linalg.norm(flat_out), np.linalg.norm(flat_std), rtol=1e-6)
  np.testing.assert_allclose(_cos(flat_out, flat_std + 2.0 * flat_vis), 1.0, rtol=1e-6)


def test_gamma_zero_and_parallel_gradients_give_identity():
  g_std, g_vis = _random_grads(1)
  out, _ = vgs.steer_gradients(g_std, g_vis, gamma=0.0)
  np.testing.assert_allclose(_flat(out), _flat(g_std), rtol=1e-6)
  parallel = jax.tree.map(lambda g: 0.3 * g, g_std)
  out, stats = vgs.steer_gradients(g_std, parallel, gamma=2.0)
  np.testing.assert_allclose(_flat(out), _flat(g_std), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(stats["cos_std_vis"], 1.0, rtol=1e-6)


def test_alignment_with_visual_gradient_grows_with_gamma():
  for seed in range(3):
    g_std, g_vis = _random_grads(seed + 10)
    cosines = [_cos(_flat(vgs.steer_gradients(g_std, g_vis, gamma=gamma)[0]), _flat(g_vis))
               for gamma in (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 16.0)]
    assert all(b >= a - 1e-6 for a, b in zip(cosines, cosines[1:])), cosines
    assert cosines[-1] > cosines[0] + 0.1


def test_constant_eta_and_language_preservation_gradient():
  g_std, g_vis = _random_grads(2)
  g_lp = jax.tree.map(lambda g: -g, g_vis)
  out, _ = vgs.steer_gradients(g_std, g_vis, gamma=2.0, eta=0.41, lam=0.01, g_lp=g_lp)
  expected = 0.41 * (_flat(g_std) + 2.0 * _flat(g_vis)) + 0.01 * 0.41 * _flat(g_lp)
  np.testing.assert_allclose(_flat(out), expected, rtol=1e-5)


def test_projection_removes_only_the_conflicting_component():
  g_std, g_vis = np.array([1.0, -2.0, 0.5]), np.array([0.0, 1.0, 1.0])
  projected = vgs.project_conflict(g_std, g_vis)
  np.testing.assert_allclose(projected @ g_vis, 0.0, atol=1e-6)  # ⟨g, v⟩ = −1.5 < 0: projected onto v's complement
  np.testing.assert_allclose(projected, g_std + 0.75 * g_vis, rtol=1e-6)
  agreeing = np.array([1.0, 2.0, 0.5])
  np.testing.assert_array_equal(vgs.project_conflict(agreeing, g_vis), agreeing)
  np.testing.assert_allclose(vgs.project_conflict(-g_vis, g_vis), 0.0, atol=1e-7)  # opposite: nothing left
  out, _ = vgs.steer_gradients(g_std, g_vis, gamma=0.0, project_conflicts=True)
  np.testing.assert_allclose(out @ g_vis, 0.0, atol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(out), np.linalg.norm(g_std), rtol=1e-6)


def test_zero_gradients_give_zeros_without_nan():
  zero = {"w": np.zeros(3, np.float32)}
  some = {"w": np.array([1.0, 2.0, 3.0], np.float32)}
  for g_std, g_vis, project in [(zero, zero, False), (zero, zero, True), (some, zero, True), (zero, some, False)]:
    out, stats = vgs.steer_gradients(g_std, g_vis, gamma=2.0, project_conflicts=project)
    assert np.isfinite(out["w"]).all() and all(np.isfinite(v) for v in stats.values())
  np.testing.assert_allclose(vgs.steer_gradients(some, zero, gamma=2.0)[0]["w"], some["w"])
  np.testing.assert_array_equal(vgs.steer_gradients(zero, zero, gamma=2.0)[0]["w"], 0.0)


def test_bfloat16_gradients_keep_their_dtype():
  g = {"w": jnp.ones(4, jnp.bfloat16)}
  out, _ = vgs.steer_gradients(g, {"w": jnp.arange(4, dtype=jnp.bfloat16)}, gamma=2.0)
  assert out["w"].dtype == jnp.bfloat16


def test_transform_chains_with_clip_and_adamw_and_forwards_extra_args():
  g_std, g_vis = _random_grads(3)
  params = jax.tree.map(jnp.zeros_like, g_std)
  chained = optax.chain(vgs.vgs_steering(2.0), optax.clip_by_global_norm(1.0), optax.adamw(1e-3, weight_decay=1e-2))
  manual = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3, weight_decay=1e-2))
  state, manual_state = chained.init(params), manual.init(params)
  manual_update = jax.jit(manual.update)
  steer = jax.jit(vgs.steer_gradients, static_argnames="gamma")

  @jax.jit
  def step(state, g_std, g_vis):
    return chained.update(g_std, state, params, g_vis=g_vis)

  for seed in range(3):
    g_std, g_vis = _random_grads(seed + 20)
    updates, state = step(state, g_std, g_vis)
    steered, _ = steer(g_std, g_vis, gamma=2.0)
    expected, manual_state = manual_update(steered, manual_state, params)
    np.testing.assert_allclose(_flat(updates), _flat(expected), rtol=1e-5, atol=1e-8)
  assert int(state[0].count) == 3


def test_transform_state_tracks_emas_and_freezes_eta():
  g_std, g_vis = _random_grads(4)
  transform = vgs.vgs_steering(2.0, freeze_eta_after=2, ema_decay=0.5)
  state = transform.init(g_std)
  etas = []
  for scale in (1.0, 3.0, 0.5, 2.0):  # rescaled visual gradients change the per-step η
    g_vis_scaled = jax.tree.map(lambda g, s=scale: s * g, g_vis)
    out, state = transform.update(g_std, state, None, g_vis=g_vis_scaled)
    etas.append(float(vgs.steer_gradients(g_std, g_vis_scaled, gamma=2.0)[1]["eta"]))
    combined = _flat(g_std) + 2.0 * _flat(g_vis_scaled)
    applied = np.linalg.norm(_flat(out)) / np.linalg.norm(combined)
    if len(etas) <= 2:
      np.testing.assert_allclose(applied, etas[-1], rtol=1e-5)
    else:
      np.testing.assert_allclose(applied, (etas[0] + etas[1]) / 2, rtol=1e-5)  # running mean of the first two
  np.testing.assert_allclose(state.eta_ema, (etas[0] + etas[1]) / 2, rtol=1e-5)
  norm_std = np.linalg.norm(_flat(g_std))
  np.testing.assert_allclose(state.norm_std_ema, norm_std, rtol=1e-5)
  norms_vis = [s * np.linalg.norm(_flat(g_vis)) for s in (1.0, 3.0, 0.5, 2.0)]
  ema = norms_vis[0]
  for value in norms_vis[1:]:
    ema += 0.5 * (value - ema)
  np.testing.assert_allclose(state.norm_vis_ema, ema, rtol=1e-5)


def test_transform_requires_visual_gradient_and_validates_options():
  g_std, _ = _random_grads(5)
  transform = vgs.vgs_steering(2.0)
  with pytest.raises(ValueError, match="g_vis"):
    transform.update(g_std, transform.init(g_std), None)
  with pytest.raises(ValueError, match="eta"):
    vgs.vgs_steering(2.0, eta="fixed")
  with pytest.raises(ValueError, match="freeze_eta_after"):
    vgs.vgs_steering(2.0, eta=0.4, freeze_eta_after=3)
  with pytest.raises(ValueError, match="g_vis"):
    vgs.steer_gradients({"a": np.ones(2)}, {"b": np.ones(2)}, gamma=1.0)


def test_two_grads_matches_separate_gradients():
  rng = np.random.default_rng(6)
  params = {"w": rng.standard_normal((4, 3)).astype(np.float32), "b": rng.standard_normal(3).astype(np.float32)}
  x = rng.standard_normal((5, 4)).astype(np.float32)

  def losses(p, x):
    h = jnp.tanh(x @ p["w"] + p["b"])
    return jnp.stack([jnp.mean(h**2), jnp.mean(jnp.sin(h))])

  values, (g1, g2) = jax.jit(vgs.value_and_two_grads, static_argnums=0)(losses, params, x)
  np.testing.assert_allclose(values, losses(params, x), rtol=1e-6)
  for got, index in ((g1, 0), (g2, 1)):
    expected = jax.jit(jax.grad(lambda p, i=index: losses(p, x)[i]))(params)
    for name in params:
      np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-7)
  g1_again, _ = jax.jit(vgs.two_grads, static_argnums=0)(losses, params, x)
  np.testing.assert_allclose(g1_again["w"], g1["w"], rtol=1e-5, atol=1e-7)

"""The vertical-slash layout stage built from per-head tables and short ranked lists (`vertical_slash_layout`)
lists exactly the blocks of the dense [NQ, NK] candidate path it replaced (`_vertical_slash_layout_dense`:
`vertical_slash_blocks` + `finalize`), in both of its candidate forms, on random sums: block_q != block_kv,
sequence lengths of an odd number of blocks, ties, forced columns / diagonals, and MAXN below a row's candidates
(rows that overflow keep their best blocks, ties to the lower id)."""

import functools
import importlib

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from jaxagents.sparse.layouts import identity_frame, offset_blocks

lists = importlib.import_module("jaxagents.sparse.vertical_slash_lists")
vs = importlib.import_module("jaxagents.sparse.vertical_slash")  # the package re-exports a function of that name

# (block_q, block_kv, T / lcm(block_q, block_kv) (odd), causal, inputs, v_size, s_size, max_blocks, forced columns,
# forced diagonals, whether some row has more candidates than max_blocks)
CASES = {
  "equal_blocks_default_budget": (64, 64, 9, True, "uniform", 5, 40, None, 3, 10, False),
  "q64_kv128_ties_overflow": (64, 128, 5, True, "ties", 3, 200, 3, 0, 0, True),
  "q128_kv64_non_causal_overflow": (128, 64, 5, False, "uniform", 4, 300, 6, 30, 100, True),
  "q32_kv96_three_phases": (32, 96, 3, True, "uniform", 40, 250, 2, 2, 50, True),
  "q64_kv32_ties_every_offset": (64, 32, 11, True, "ties", 80, 1407, 7, 30, 100, True),
  "q32_kv32_non_causal_signed": (32, 32, 21, False, "signed", 6, 100, 9, 2, 5, True),
  "one_block_per_row_own_blocks_tie": (128, 32, 3, True, "ties", 2, 40, 1, 1, 1, True),
  "all_zero_sums": (32, 64, 5, True, "zeros", 10, 60, 1, 0, 0, True),
  "short_lists_many_key_blocks": (32, 32, 63, True, "uniform", 4, 200, 6, 2, 10, True),
  "short_lists_non_causal": (32, 64, 31, False, "ties", 3, 200, 5, 0, 3, True),
  "no_columns_no_slashes": (64, 64, 5, True, "uniform", 0, 0, 2, 0, 0, False),
}


def _sums(kind: str, kv_len: int, seed: int, batch: int = 2, heads: int = 3):
  rng = np.random.default_rng(seed)
  shapes = (batch, heads, kv_len), (batch, heads, 2 * kv_len - 1)
  if kind == "uniform":
    vertical, slash = (rng.random(shape, dtype=np.float32) for shape in shapes)
  elif kind == "ties":  # a few levels: many equal sums, equal scores across blocks
    vertical, slash = (rng.integers(0, 4, shape).astype(np.float32) / 4 for shape in shapes)
  elif kind == "signed":
    vertical, slash = (rng.standard_normal(shape).astype(np.float32) for shape in shapes)
  else:
    vertical, slash = (np.zeros(shape, np.float32) for shape in shapes)
  return jnp.asarray(vertical), jnp.asarray(slash)


def _case(name):
  block_q, block_kv, units, causal, kind, v_size, s_size, max_blocks, n_vertical, n_slash, _ = CASES[name]
  kv_len = units * int(np.lcm(block_q, block_kv))
  vertical, slash = _sums(kind, kv_len, seed=sorted(CASES).index(name))
  params = dict(
    num_rows=4, block_q=block_q, block_kv=block_kv, max_blocks=max_blocks, causal=causal,
    n_forced_vertical=n_vertical, n_forced_slash=n_slash,
  )
  return vertical, slash, v_size, s_size, params


def _assert_same_layout(layout, reference, what: str):
  np.testing.assert_array_equal(np.asarray(layout.kv_count), np.asarray(reference.kv_count), err_msg=what)
  np.testing.assert_array_equal(np.asarray(layout.kv_blocks), np.asarray(reference.kv_blocks), err_msg=what)


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _layouts(vertical, slash, v_size, s_size, params):
  """(dense reference, ranked lists, per-row keys, per-row keys with MAXN = NK: every candidate), one compile."""
  params = dict(params)
  everything = {**params, "max_blocks": vertical.shape[-1] // params["block_kv"]}
  return (
    vs._vertical_slash_layout_dense(vertical, slash, v_size, s_size, **params),
    vs._vertical_slash_layout(vertical, slash, v_size, s_size, candidates="lists", **params),
    vs._vertical_slash_layout(vertical, slash, v_size, s_size, candidates="rows", **params),
    vs._vertical_slash_layout(vertical, slash, v_size, s_size, candidates="rows", **everything),
  )


@pytest.mark.parametrize("name", sorted(CASES))
def test_ranked_and_row_candidates_list_the_dense_paths_blocks(name):
  vertical, slash, v_size, s_size, params = _case(name)
  reference, lists, rows, everything = _layouts(vertical, slash, v_size, s_size, tuple(sorted(params.items())))
  _assert_same_layout(lists, reference, f"{name}, ranked lists")
  _assert_same_layout(rows, reference, f"{name}, per-row keys")
  # The case exercises the ranking (a row holds more candidates than MAXN), or it says it does not.
  assert (int(jnp.max(everything.kv_count)) > reference.max_blocks) == CASES[name][-1], name


@pytest.mark.parametrize("name", ["short_lists_many_key_blocks", "q32_kv32_non_causal_signed", "all_zero_sums"])
def test_public_layout_stage_compiled_alone_equals_the_dense_path(name):
  # Compiled apart from the reference (the float32 prefix sums are not shared between the two programs).
  vertical, slash, v_size, s_size, params = _case(name)
  reference = vs._vertical_slash_layout_dense(vertical, slash, v_size, s_size, **params)
  _assert_same_layout(vs.vertical_slash_layout(vertical, slash, v_size, s_size, **params), reference, name)


def _array_shapes(jaxpr):
  for eqn in jaxpr.eqns:
    yield from (v.aval.shape for v in eqn.outvars)
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      yield from _array_shapes(sub)


def test_short_lists_never_build_a_query_block_by_key_block_array():
  vertical, slash, v_size, s_size, params = _case("short_lists_many_key_blocks")
  num_q_blocks = vertical.shape[-1] // params["block_q"]
  num_kv_blocks = vertical.shape[-1] // params["block_kv"]
  jaxpr = jax.make_jaxpr(lambda v, s: vs.vertical_slash_layout(v, s, v_size, s_size, **params))(vertical, slash)
  shapes = list(_array_shapes(jaxpr.jaxpr))
  assert not [shape for shape in shapes if shape[-2:] == (num_q_blocks, num_kv_blocks)]
  widest = max(shape[-1] for shape in shapes if len(shape) == 4 and shape[2] == num_q_blocks)
  assert widest < num_kv_blocks  # every per-row array is a short list


@pytest.mark.parametrize("block_q, block_kv", [(64, 64), (32, 96), (128, 32)])
def test_diagonal_tables_reproduce_offset_blocks_weights_bit_for_bit(block_q, block_kv):
  # The per-(phase, diagonal) tables, expanded to [NQ, NK], give the exact float32 weights and counts the dense
  # path's `offset_blocks` computes from prefix sums (the ranking of overflowing rows depends on every bit).
  kv_len, boost = 7 * int(np.lcm(block_q, block_kv)), 5.0
  num_kv_blocks = kv_len // block_kv
  _, slash = _sums("uniform", kv_len, seed=11)
  rows = lists.RowGeometry.of(kv_len // block_q, block_q, block_kv)

  # Two programs, compiled apart as the two layout paths are: nothing is shared between them.
  chosen_offsets = jax.jit(lambda slash: vs._chosen_offsets(slash, 150, boost, 20))
  tables = jax.jit(lambda index, forced, table: lists.diagonal_tables(table, index, forced, rows, kv_len, boost))

  @jax.jit
  def dense(slash):
    slash_index, forced, unboosted = vs._chosen_offsets(slash, 150, boost, 20)
    b, h = (x[..., None] for x in jnp.ogrid[: slash.shape[0], : slash.shape[1]])
    chosen = jnp.zeros(unboosted.shape, jnp.int32).at[b, h, slash_index].add(1)
    frame = identity_frame(slash.shape[0], 1, kv_len, block_q, block_kv, True)
    return offset_blocks(frame, unboosted, chosen * forced, chosen)

  score, hit = tables(*chosen_offsets(slash))
  weight, forced_count, count = dense(slash)
  n = np.arange(num_kv_blocks)
  j = rows.num_kv_blocks - 1 - rows.first_own[:, None] + n  # diagonal index of block pair (i, n)
  np.testing.assert_array_equal(np.asarray(score)[:, :, rows.phase[:, None], j],
                                np.asarray(weight + boost * forced_count))
  np.testing.assert_array_equal(np.asarray(hit)[:, :, rows.phase[:, None], j], np.asarray(count > 0))

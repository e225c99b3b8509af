"""GUI-Actor training on rendered screens (Wu et al. 2025, arXiv 2506.03143, §3): a tiny Qwen2-VL-family backbone with
the attention-based action head, trained with the multi-patch loss plus the LM loss on the response, then a grounding
verifier (§3.3) that re-ranks the head's candidates.

    python -m jaxagents.train --config configs/gui_actor_screens.py --workdir runs/gui_actor_screens

Data. Click tasks of `gui_tasks` on `gui_screens` renders at the renderer's smallest screen (480x320, scale 1),
resized to `data.image_size` (240x160 by default) so that one visual token covers `patch_size * merge` pixels of the
resized image (20 px: a 12x8 token grid). Record i of a stream is one click task on screen i (its own renderer seed),
drawn among the roles of `data.roles`; the training stream is `config.seed`, the held-out one another seed.

Tokens (ours; GUI-Actor's are Qwen's BPE plus five added specials, microsoft/GUI-Actor `src/gui_actor/constants.py`):
a word-level vocabulary built from the instruction templates and the renderer's text pools (lower-cased words,
digits one by one, punctuation; anything else is `<unk>`), Qwen-VL's vision specials, GUI-Actor's
`<|pointer_start|>` / `<|pointer_pad|>` / `<|pointer_end|>`, one `pyautogui.click(` token and `)`. A row is

    <|vision_start|> <|image_pad|> x N <|vision_end|> instruction words       (prompt)
    pyautogui.click( <|pointer_start|> <|pointer_pad|> <|pointer_end|> ) <eos>  (response)

the response GUI-Actor's dataset writes for a click (`dataset.py`, `reformat_coordinates`). LM labels as theirs: the
response tokens, `<|pointer_end|>` excluded (-100 in their labels). Pointer labels: `multi_patch_labels` of the
target box; loss `multi_patch_loss` (their `VisionHead_MultiPatch` KL). Total = w_lm · L_lm + w_ptr · L_ptr.

Phases (config `grounding` and `verifier` sections):
  * "grounding": GUI-Actor's training of `params` = {"backbone", "action_head"}. `config.train_backbone` False is
    their warm-up ("LiteTrain", `scripts/warmup.sh`): the backbone is frozen by `optax.multi_transform` with
    `optax.set_to_zero()` and only the head learns (their warm-up also trains the five new embedding rows; here
    every row of the tiny vocabulary is new, so the frozen switch freezes them all). True is their full SFT
    (`scripts/train.sh`). The tiny backbone is trained from scratch here, so the full setting is the default.
  * "verifier": the grounding verifier, our reconstruction at tiny scale. Theirs
    (`verifier/verifier_model.py`, `GroundingVerifier`) is a separate VLM (UI-TARS-2B fine-tuned) that sees the
    screenshot with a hollow red circle at a candidate and the instruction, and answers True/False; its score is
    p(True) / (p(True) + p(False)). Ours is the same recipe on a second tiny Qwen-VL (`verifier_params`, the
    backbone's config): prompt = the marked screen + instruction + `<|verify|>`, score =
    `regions.verifier_probability` of the next-token logits for `true` / `false`, trained with binary
    cross-entropy on that score. It starts from the trained grounding backbone (`verifier.init_from_grounding`;
    theirs starts from a GUI-pretrained VLM, UI-TARS-2B-SFT; from scratch ours stays at chance in a CPU budget).
    Training pairs follow their `verifier_data_generation.py`: a positive circle at the target box centre, a
    negative at another element's centre (a random point outside the box when that
    centre lies inside it). Every record gives one positive and one negative row. `verifier.negatives = "head"`
    (ours) takes the negative from the head's own wrong candidates instead: the mistakes re-ranking must catch.

Evaluation (held-out screens of another seed): point-in-box accuracy of `ground`'s point (the head's top region
centre), overall and per element role, beside two baselines on the same tasks: the screen centre and the centre of
a uniformly drawn (seeded) element among the screen's elements of the task roles; and the accuracy after
re-ranking `verifier_candidates` (at most `eval.max_candidates` of them, ours: a cost cap) with the verifier through
`select_from_scores` (their early stop at τ = 0.8 replayed on scores computed in one batch).
Evaluation runs on every host over all held-out tasks (single-host jobs; no sharing of the work).
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image, ImageDraw

from jaxagents.data import gui_scoring, gui_screens, gui_tasks
from jaxagents.models.gui_actor import (
  GUIActor,
  GUIActorConfig,
  ground,
  multi_patch_labels,
  multi_patch_loss,
  select_from_scores,
  verifier_candidates,
  verifier_probability,
)
from jaxagents.models.qwen_vl.batching import token_batch
from jaxagents.models.qwen_vl.config import QwenVLConfig, TextConfig, VisionConfig
from jaxagents.models.qwen_vl.model import QwenVL
from jaxagents.models.qwen_vl.preprocess import ImageOptions
from jaxagents.tasks import config_checks
from jaxagents.tasks.base import Optimizer, Phase, apply_gradients
from jaxagents.tasks.vlm_sft import adamw

EVAL_SEED_OFFSET = 1_000_003  # held-out screens come from another renderer stream than training
TRAIN_RECORDS = 1 << 30  # the screens are generated: a source as long as any run needs
SCREEN = (480, 320, 1.0)  # the renderer's smallest logical screen (gui_screens.MIN_LOGICAL_SIZE), scale 1
CLICK_ROLES = ("button", "menu_button", "checkbox", "tab", "text_input", "canvas_shape", "image", "menu_item",
               "table_cell", "word")

# ------------------------------------------------------------------------------------------------ vocabulary

SPECIALS = ("<pad>", "<eos>", "<unk>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
            "<|pointer_start|>", "<|pointer_pad|>", "<|pointer_end|>", "pyautogui.click(", ")", "<|verify|>", "true",
            "false")
# The words of `gui_tasks`' click templates.
TEMPLATE_WORDS = ("click the button press drop-down open menu in bar uncheck turn off checkbox check on switch to "
                  "tab field put cursor box select canvas image picture captioned choose column header of table "
                  "cell row word").split()
PUNCTUATION = tuple(".,'?-")


def _pool_texts() -> list[str]:
  s = gui_screens
  texts = [*s.MENUBAR_TEXTS, *s.BUTTON_TEXTS, *s.FIELD_TEXTS, *s.CHECKBOX_TEXTS, *s.SLIDER_TEXTS, *s.TAB_TEXTS,
           *s.TOOL_TEXTS, *s.IMAGE_CAPTIONS, *s.NAMES, *s.CITIES, *s.TABLE_COLUMNS, *s.STATUSES, *s.PARAGRAPH_WORDS,
           *s.SHAPE_KINDS, *s.SHAPE_COLOURS]
  for title, items in s.MENUS.items():
    texts += [title, *items]
  for titles in s.PANEL_TITLES.values():
    texts += list(titles)
  return texts


def split_words(text: str) -> list[str]:
  """Lower-cased words, digits one by one, punctuation marks one by one."""
  return re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]", text.lower())


def _build_vocab() -> tuple[str, ...]:
  words = set(TEMPLATE_WORDS) | set(PUNCTUATION) | {str(d) for d in range(10)}
  for text in _pool_texts():
    words.update(split_words(text))
  return SPECIALS + tuple(sorted(words - set(SPECIALS)))


VOCAB = _build_vocab()
TOKEN_ID = {token: i for i, token in enumerate(VOCAB)}
PAD, EOS, UNK = TOKEN_ID["<pad>"], TOKEN_ID["<eos>"], TOKEN_ID["<unk>"]
VISION_START, VISION_END = TOKEN_ID["<|vision_start|>"], TOKEN_ID["<|vision_end|>"]
IMAGE_PAD, VIDEO_PAD = TOKEN_ID["<|image_pad|>"], TOKEN_ID["<|video_pad|>"]
POINTER_START, POINTER_PAD, POINTER_END = (TOKEN_ID["<|pointer_start|>"], TOKEN_ID["<|pointer_pad|>"],
                                           TOKEN_ID["<|pointer_end|>"])
VERIFY, TRUE, FALSE = TOKEN_ID["<|verify|>"], TOKEN_ID["true"], TOKEN_ID["false"]
# GUI-Actor's placeholder response for a click (their `inference(..., use_placeholder=True)`), then <eos>.
RESPONSE = (TOKEN_ID["pyautogui.click("], POINTER_START, POINTER_PAD, POINTER_END, TOKEN_ID[")"], EOS)


def encode(text: str) -> list[int]:
  """Instruction text -> token ids (`<unk>` for words outside the vocabulary)."""
  return [TOKEN_ID.get(word, UNK) for word in split_words(text)]


# ------------------------------------------------------------------------------------------------ data

MAX_INSTRUCTION = 24  # tokens; the longest click template with the longest names is under 20


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  if image.shape[1::-1] == tuple(size):
    return image
  return np.asarray(Image.fromarray(image).resize(tuple(size), Image.BILINEAR))


def _centre(box) -> tuple[float, float]:
  return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


class GroundingSource:
  """Random access to click tasks: record i is one task on screen i of stream `seed` (a screen without a task of
  `roles` is replaced by the next renderer seed of the same index). Picklable; a pure function of (seed, i).

  A record: "image" uint8 [h, w, 3] (resized), "instruction" int32 [MAX_INSTRUCTION] (PAD-filled), "length" int32,
  "target_box" float32 [4] normalised (x0, y0, x1, y1), "role" int32 (index in `roles`), "negative" float32 [2]
  the verifier's negative point, "random_element" float32 [2] the random-element baseline's point (normalised).
  """

  def __init__(self, seed: int, image_size: tuple[int, int], roles: tuple[str, ...], length: int = TRAIN_RECORDS):
    unknown = sorted(set(roles) - set(CLICK_ROLES))
    if unknown or not roles:
      raise ValueError(f"config.data.roles: expected a non-empty subset of {CLICK_ROLES}, got {tuple(roles)}.")
    self.seed, self.image_size, self.roles, self.length = int(seed), tuple(image_size), tuple(roles), int(length)

  def __len__(self) -> int:
    return self.length

  def task(self, index: int) -> tuple[gui_screens.Screen, gui_tasks.Task, np.random.Generator]:
    for attempt in range(64):
      rng = np.random.default_rng([self.seed, int(index), attempt])
      screen = gui_screens.render_screen(gui_tasks.screen_seed(self.seed, index * 64 + attempt), *SCREEN)
      tasks = [t for t in gui_tasks.make_tasks(screen, rng, 8, ("click",)) if t.role in self.roles]
      if tasks:
        return screen, tasks[int(rng.integers(len(tasks)))], rng
    raise ValueError(f"config.data.roles: 64 screens of stream {self.seed} hold no click task on {self.roles}.")

  def __getitem__(self, index) -> dict[str, np.ndarray]:
    screen, task, rng = self.task(int(index))
    width, height = screen.width, screen.height
    box = np.array(task.target_box, np.float64) / [width, height, width, height]
    ids = encode(task.instruction)[:MAX_INSTRUCTION]
    instruction = np.full(MAX_INSTRUCTION, PAD, np.int32)
    instruction[:len(ids)] = ids
    candidates = [e for e in screen.elements if e.role in self.roles]
    random_element = np.array(_centre(candidates[int(rng.integers(len(candidates)))].box)) / [width, height]
    others = [e for e in screen.elements if e.id != task.element_id and e.role in CLICK_ROLES]
    negative = None
    if others:
      negative = np.array(_centre(others[int(rng.integers(len(others)))].box)) / [width, height]
    while negative is None or gui_scoring.point_in_box(negative, box):
      negative = rng.uniform(0.0, 1.0, 2)
    return {"image": _resize(screen.image, self.image_size), "instruction": instruction,
            "length": np.int32(len(ids)), "target_box": box.astype(np.float32),
            "role": np.int32(self.roles.index(task.role)), "negative": negative.astype(np.float32),
            "random_element": random_element.astype(np.float32)}


def mark(image: np.ndarray, point) -> np.ndarray:
  """The screen with a hollow red circle at the normalised point (their verifier's mark: radius 7 px, width 3 at
  screenshot scale; here radius 4 and width 2 on the small resized screen, ours)."""
  canvas = Image.fromarray(np.asarray(image, np.uint8))
  x, y = point[0] * canvas.width, point[1] * canvas.height
  ImageDraw.Draw(canvas).ellipse((x - 4, y - 4, x + 4, y + 4), outline=(255, 0, 0), width=2)
  return np.asarray(canvas)


# ------------------------------------------------------------------------------------------------ model


def model_config(*, hidden: int = 64, layers: int = 2, vision_depth: int = 2, vision_width: int = 32,
                 patch_size: int = 10) -> QwenVLConfig:
  """A tiny Qwen2-VL-family model on `VOCAB` (trained from scratch); one visual token = 2x2 patches."""
  if hidden % 16 or vision_width % 2 or min(hidden, layers, vision_depth, vision_width, patch_size) < 1:
    raise ValueError(f"config.model: expected positive sizes, hidden a multiple of 16 and vision_width even, got "
                     f"hidden={hidden}, layers={layers}, vision_depth={vision_depth}, vision_width={vision_width}, "
                     f"patch_size={patch_size}.")
  heads = max(hidden // 16, 1)
  text = TextConfig(vocab_size=len(VOCAB), hidden_size=hidden, intermediate_size=2 * hidden, num_layers=layers,
                    num_heads=heads, num_kv_heads=max(heads // 2, 1), head_dim=16, mrope_section=(2, 3, 3))
  vision = VisionConfig(depth=vision_depth, width=vision_width, num_heads=2, mlp_dim=2 * vision_width,
                        out_dim=hidden, patch_size=patch_size)
  return QwenVLConfig(family="qwen2_vl", text=text, vision=vision, image_token_id=IMAGE_PAD,
                      video_token_id=VIDEO_PAD, vision_start_token_id=VISION_START, vision_end_token_id=VISION_END,
                      tie_word_embeddings=True)


def grounding_loss(model: GUIActor, params, inputs, completion_mask, labels, rng, *, lm_weight: float,
                   pointer_weight: float, deterministic: bool = False):
  """w_lm · L_lm + w_ptr · L_ptr of a batch (module docstring); (loss, metrics)."""
  out = model.apply({"params": params}, inputs, num_patches=labels.shape[-1], num_pointers=1,
                    deterministic=deterministic, rngs={"dropout": rng})
  ids = inputs.input_ids
  targets = ids[:, 1:]
  lm_mask = completion_mask[:, 1:] & (targets != POINTER_END)  # their labels: -100 at <|pointer_end|>
  logp = jnp.take_along_axis(jax.nn.log_softmax(out.logits[:, :-1].astype(jnp.float32)), targets[..., None],
                             axis=-1)[..., 0]
  lm_loss = -jnp.sum(logp * lm_mask) / jnp.maximum(lm_mask.sum(), 1)
  pointer_loss, pointer_metrics = multi_patch_loss(out.pointer_logits, labels[:, None, :], out.visual_mask,
                                                   out.pointer_mask)
  loss = lm_weight * lm_loss + pointer_weight * pointer_loss
  return loss, {"lm_loss": lm_loss, "pointer_loss": pointer_loss,
                "label_mass": pointer_metrics["label_mass"].mean()}


def verifier_loss(model: QwenVL, params, inputs, is_correct):
  """Binary cross-entropy of the verifier's score sigmoid(l_true − l_false) at the prompt's last token."""
  logits = model.apply({"params": params}, *inputs.model_args())[0][:, -1]
  margin = logits[:, TRUE].astype(jnp.float32) - logits[:, FALSE].astype(jnp.float32)
  loss = jnp.mean(optax.sigmoid_binary_cross_entropy(margin, is_correct.astype(jnp.float32)))
  accuracy = jnp.mean((margin > 0) == is_correct)
  return loss, {"verifier/accuracy": accuracy}


class GUIGrounding:
  """GUI-Actor grounding, then its verifier, on rendered click tasks (module docstring)."""

  plot_file = "loss.png"
  plot_keys = ("grounding/loss", "grounding/label_mass", "verifier/loss", "eval/accuracy",
               "eval/verifier_accuracy")
  progress_keys = ("loss",)
  summary_keys = ("eval/accuracy", "eval/verifier_accuracy", "eval/centre_accuracy", "eval/random_element_accuracy")

  def __init__(self, config):
    config_checks.positive(config, "grounding.batch_size", "verifier.batch_size", "eval.examples",
                           "eval.max_candidates")
    config_checks.non_negative(config, "grounding.steps", "verifier.steps")
    self.config = config
    data = config.data
    if config.verifier.get("negatives", "elements") not in ("elements", "head"):
      raise ValueError(f"config.verifier.negatives: expected 'elements' or 'head', got "
                       f"{config.verifier.negatives!r}.")
    self.image_size = tuple(int(v) for v in data.image_size)
    self.roles = tuple(data.roles)
    self.model_config = model_config(**dict(config.model))
    self.token_size = self.model_config.vision.patch_size * self.model_config.vision.merge_size
    if len(self.image_size) != 2 or any(v <= 0 or v % self.token_size for v in self.image_size):
      raise ValueError(f"config.data.image_size: expected (width, height), multiples of patch_size * merge = "
                       f"{self.token_size}, got {tuple(data.image_size)}.")
    self.gui_config = GUIActorConfig(self.model_config, pointer_pad_token_id=POINTER_PAD,
                                     pointer_start_token_id=POINTER_START, pointer_end_token_id=POINTER_END)
    self.model = GUIActor(self.gui_config)
    self.verifier = QwenVL(self.model_config)
    self.train_source = GroundingSource(config.seed, self.image_size, self.roles)
    self.held_out = GroundingSource(config.seed + EVAL_SEED_OFFSET, self.image_size, self.roles,
                                    length=config.eval.examples)
    self.phases = (Phase("grounding", config.grounding.steps, config.grounding.batch_size),
                   Phase("verifier", config.verifier.steps, config.verifier.batch_size, optimizer="verifier"))
    self.image_options = ImageOptions(min_pixels=self.image_size[0] * self.image_size[1],
                                      max_pixels=self.image_size[0] * self.image_size[1],
                                      patch_size=self.model_config.vision.patch_size,
                                      merge_size=self.model_config.vision.merge_size)
    self._optimizers = self._make_optimizers()

  # ---- batches (host)

  def grounding_inputs(self, records):
    """(ModelInputs, completion_mask, patch labels [B, N]) of a batch of records."""
    rows = [list(records["instruction"][b, :records["length"][b]]) for b in range(len(records["length"]))]
    prompts = [[VISION_START, IMAGE_PAD, VISION_END, *row] for row in rows]
    inputs, completion_mask = token_batch(self.model_config, prompts, [[image] for image in records["image"]],
                                          self.image_options, pad_id=PAD, completions=[RESPONSE] * len(rows))
    width, height = self.image_size
    labels = np.stack([multi_patch_labels(box, width, height, self.token_size) for box in records["target_box"]])
    return inputs, completion_mask, labels

  def verifier_inputs(self, images, rows, points):
    """ModelInputs of marked screens: image with a circle at points[b] + instruction + <|verify|>."""
    prompts = [[VISION_START, IMAGE_PAD, VISION_END, *row, VERIFY] for row in rows]
    marked = [[mark(image, point)] for image, point in zip(images, points)]
    return token_batch(self.model_config, prompts, marked, self.image_options, pad_id=PAD)[0]

  # ---- the loop's contract

  def init(self, rng):
    records = self.stack([self.train_source[0]])
    inputs, _, labels = self.grounding_inputs(records)
    grounding_key, verifier_key = jax.random.split(rng)
    params = self.model.init(grounding_key, inputs, num_patches=labels.shape[-1], num_pointers=1)["params"]
    rows = [list(records["instruction"][0, :records["length"][0]])]
    verifier_inputs = self.verifier_inputs(records["image"], rows, records["negative"])
    verifier_params = self.verifier.init(verifier_key, *verifier_inputs.model_args())["params"]
    return {"params": params, "verifier_params": verifier_params}

  def optimizers(self):
    return self._optimizers

  def _make_optimizers(self):
    grounding, verifier = self.config.grounding, self.config.verifier
    train_backbone = bool(self.config.train_backbone)

    def labels(params):
      return {name: jax.tree.map(lambda _, name=name: "train" if train_backbone or name != "backbone" else "frozen",
                                 tree) for name, tree in params.items()}

    main = optax.multi_transform({"train": adamw(grounding.learning_rate), "frozen": optax.set_to_zero()}, labels)
    return {"main": Optimizer(main), "verifier": Optimizer(adamw(verifier.learning_rate), params="verifier_params")}

  def source(self, phase):
    del phase
    return self.train_source

  def begin_phase(self, state, phase):
    """The verifier starts from the grounding phase's backbone (`verifier.init_from_grounding`), as theirs starts
    from a GUI-pretrained VLM rather than from scratch."""
    if phase.name == "verifier" and self.config.verifier.get("init_from_grounding", True):
      state = {**state, "verifier_params": jax.tree.map(jnp.copy, state["params"]["backbone"])}
    return state

  @staticmethod
  def stack(records):
    return {key: np.stack([r[key] for r in records]) for key in records[0]}

  def prepare(self, state, records, rng, phase):
    del rng
    records = jax.tree.map(np.asarray, records)
    if phase.name == "grounding":
      inputs, completion_mask, labels = self.grounding_inputs(records)
      return {"inputs": inputs, "completion_mask": completion_mask, "labels": labels}, {}
    rows = [list(records["instruction"][b, :records["length"][b]]) for b in range(len(records["length"]))]
    positives = [_centre(box) for box in records["target_box"]]
    negatives = list(records["negative"])
    if self.config.verifier.get("negatives", "elements") == "head":
      negatives = self.head_negatives(state["params"], records)
    images = list(records["image"]) * 2
    inputs = self.verifier_inputs(images, rows * 2, positives + negatives)
    is_correct = np.array([True] * len(rows) + [False] * len(rows))
    return {"inputs": inputs, "is_correct": is_correct}, {}

  def grids(self, count: int) -> np.ndarray:
    """[count, 3] (t, h, w) patch grid of the resized screens."""
    patch = self.model_config.vision.patch_size
    return np.tile([1, self.image_size[1] // patch, self.image_size[0] // patch], (count, 1))

  def head_negatives(self, params, records) -> list:
    """Per record, the head's first verifier candidate outside the target box, else the record's element negative
    (`verifier.negatives = "head"`, ours: hard negatives from the head being re-ranked)."""
    inputs, _, _ = self.grounding_inputs(records)
    negatives = list(records["negative"])
    for b, grounding in enumerate(ground(self.model, params, inputs, self.grids(len(negatives)))):
      n_h, n_w = grounding.grid_hw
      candidates = verifier_candidates(grounding.attention, n_w, n_h)[:self.config.eval.max_candidates]
      wrong = [p for p in candidates if not gui_scoring.point_in_box(p, records["target_box"][b])]
      if wrong:
        negatives[b] = np.asarray(wrong[0], np.float32)
    return negatives

  def update(self, state, batch, rng, phase):
    optimizer = self._optimizers[phase.optimizer]
    if phase.name == "grounding":
      c = self.config.grounding
      loss_fn = functools.partial(grounding_loss, self.model, inputs=batch["inputs"],
                                  completion_mask=batch["completion_mask"], labels=batch["labels"], rng=rng,
                                  lm_weight=c.lm_weight, pointer_weight=c.pointer_weight)
      prefix = "grounding/"
    else:
      loss_fn = functools.partial(verifier_loss, self.verifier, inputs=batch["inputs"],
                                  is_correct=batch["is_correct"])
      prefix = "verifier/"
    (loss, metrics), grads = jax.value_and_grad(lambda p: loss_fn(p), has_aux=True)(state[optimizer.params])
    state = apply_gradients(state, grads, phase.optimizer, optimizer)
    metrics = {(k if k.startswith(prefix) else prefix + k): v for k, v in metrics.items()}
    return state, {**metrics, "loss": loss, f"{prefix}loss": loss, "grad_norm": optax.tree.norm(grads)}

  def evaluate(self, state, step):
    del step
    return evaluate(self, jax.device_get(state["params"]), jax.device_get(state["verifier_params"]),
                    self.config.eval.examples, self.config.eval.max_candidates,
                    self.config.eval.get("verifier_threshold", 0.8))


@functools.partial(jax.jit, static_argnames=("model",))
def _verifier_scores(model: QwenVL, params, inputs):
  logits = model.apply({"params": params}, *inputs.model_args())[0][:, -1]
  return verifier_probability(logits, TRUE, FALSE)


def evaluate(task: GUIGrounding, params, verifier_params, examples: int, max_candidates: int,
             threshold: float, batch_size: int = 32) -> dict[str, float]:
  """Held-out point-in-box accuracies: the head's top region centre (overall and per role), the screen centre and a
  random element's centre, and the verifier's re-ranking of the head's candidates (module docstring)."""
  source = task.held_out
  hits = {"accuracy": [], "centre_accuracy": [], "random_element_accuracy": [], "verifier_accuracy": []}
  roles = []
  for start in range(0, examples, batch_size):
    records = task.stack([source[i] for i in range(start, min(start + batch_size, examples))])
    inputs, _, _ = task.grounding_inputs(records)
    groundings = ground(task.model, params, inputs, task.grids(len(records["role"])))
    rows = [list(records["instruction"][b, :records["length"][b]]) for b in range(len(records["length"]))]
    images, verify_rows, points, owners = [], [], [], []
    candidates_per_row = []
    for b, grounding in enumerate(groundings):
      box = records["target_box"][b]
      roles.append(task.roles[int(records["role"][b])])
      hits["accuracy"].append(gui_scoring.point_in_box(grounding.point, box))
      hits["centre_accuracy"].append(gui_scoring.point_in_box((0.5, 0.5), box))
      hits["random_element_accuracy"].append(gui_scoring.point_in_box(records["random_element"][b], box))
      n_h, n_w = grounding.grid_hw
      candidates = verifier_candidates(grounding.attention, n_w, n_h)[:max_candidates]
      candidates_per_row.append(candidates)
      for point in candidates:
        images.append(records["image"][b])
        verify_rows.append(rows[b])
        points.append(point)
        owners.append(b)
    scores = np.concatenate([
      np.asarray(jax.device_get(_verifier_scores(task.verifier, verifier_params,
                                                 task.verifier_inputs(images[i:i + 128], verify_rows[i:i + 128],
                                                                      points[i:i + 128]))))
      for i in range(0, len(points), 128)])
    owners = np.asarray(owners)
    for b, candidates in enumerate(candidates_per_row):
      chosen = candidates[select_from_scores(scores[owners == b], threshold)]
      hits["verifier_accuracy"].append(gui_scoring.point_in_box(chosen, records["target_box"][b]))
  out = {f"eval/{name}": float(np.mean(values)) for name, values in hits.items()}
  roles = np.asarray(roles)
  accuracy = np.asarray(hits["accuracy"], np.float64)
  for role in task.roles:
    if np.any(roles == role):
      out[f"eval/accuracy/{role}"] = float(accuracy[roles == role].mean())
  return out


__all__ = ["VOCAB", "GUIGrounding", "GroundingSource", "encode", "evaluate", "grounding_loss", "mark",
           "model_config", "verifier_loss"]

"""Issue 16, item 2: the evaluation as the papers compute it.

PRDC against hand-computed values and a loop transcription of Naeem et al.'s definitions (float64); the Frechet
distance against closed forms; the reference's 64 -> 112 PIL resize (``utils.low2high``) against PIL itself and its
wiring into the evaluation model; the papers' FID on the successful reconstructions only, against the attacked
identities' private images; the reference's std over restarts per batch of 60 identities; ``fid`` in results.json
and Eval_results.csv only with Inception features; pytorch-fid's weights through jaxmi's importer (slow tier).
"""

import csv
import dataclasses
import json
import statistics
import struct
import sys
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from test_attacks import tiny_attack
from test_metrics import RECON, TOP1, TOP5, evaluator, private_set, result

from jaxmi.errors import ConfigError
from jaxmi.experiments import attack as attack_exp
from jaxmi.metrics import attack as metrics
from jaxmi.metrics.prdc import prdc
from jaxmi.workdir import Workdir

# -- PRDC -------------------------------------------------------------------------------------------------------


def test_prdc_matches_hand_computed_values():
  # Reals 0..4 on a line; k = 3: radii (3rd nearest other real) 3, 2, 2, 2, 3. Fakes 0.5, 9, 20, 21, 22.
  real = np.arange(5.0)[:, None]
  fake = np.array([0.5, 9.0, 20.0, 21.0, 22.0])[:, None]
  m = prdc(real, fake, k=3)
  # precision: only 0.5 lies in a real ball (9 is 5 from real 4, radius 3) -> 1/5.
  # recall: fake 0.5's radius is 20.5 (its 3rd nearest fake, 21), a ball holding every real -> 1.
  # density: 0.5 lies in the balls of reals 0 (0.5 < 3), 1 (0.5 < 2), 2 (1.5 < 2), not 3 (2.5) or 4 (3.5) -> 3/(3*5).
  # coverage: reals 0, 1, 2 have a fake within their radius, reals 3 (2.5 vs 2) and 4 (3.5 vs 3) do not -> 3/5.
  assert m == pytest.approx({"precision": 0.2, "recall": 1.0, "density": 0.2, "coverage": 0.6}, abs=1e-12)


def prdc_by_loops(real, fake, k):
  """Naeem et al.'s Eqs. (1)-(4) point by point in float64, strict '<' as their official code."""
  dist = lambda a, b: float(np.sqrt(np.sum((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)))
  radius = lambda pts, i: sorted(dist(pts[i], pts[j]) for j in range(len(pts)) if j != i)[k - 1]
  r = [radius(real, i) for i in range(len(real))]
  s = [radius(fake, j) for j in range(len(fake))]
  n, m = len(real), len(fake)
  return {
    "precision": sum(any(dist(fake[j], real[i]) < r[i] for i in range(n)) for j in range(m)) / m,
    "recall": sum(any(dist(real[i], fake[j]) < s[j] for j in range(m)) for i in range(n)) / n,
    "density": sum(sum(dist(fake[j], real[i]) < r[i] for i in range(n)) for j in range(m)) / (k * m),
    "coverage": sum(min(dist(real[i], fake[j]) for j in range(m)) < r[i] for i in range(n)) / n,
  }


@pytest.mark.parametrize("k", [1, 3, 5])
def test_prdc_matches_the_papers_definitions_on_random_sets(k):
  rng = np.random.default_rng(k)
  real = rng.normal(size=(23, 6)).astype(np.float32)
  fake = (0.7 * rng.normal(size=(17, 6)) + 0.4).astype(np.float32)  # overlapping, not identical: all four < 1
  expected = prdc_by_loops(real, fake, k)
  got = prdc(real, fake, k)
  # Only the indicators matter: the Gram-form distances differ from the loop's by ~1e-15, far below any margin
  # between a distance and a radius in random continuous data.
  assert got == pytest.approx(expected, abs=1e-12)
  assert 0 < expected["precision"] < 1 and 0 < expected["coverage"] < 1


def test_prdc_radii_never_build_the_whole_real_by_real_matrix(monkeypatch):
  """An MNIST attack's 30,000 private images made [N, N] float64 distances (7 GB; 22 GB with temporaries), and the
  OOM killer stopped the run. The radii now come in row blocks, equal to the whole-matrix computation."""
  prdc_lib = sys.modules[prdc.__module__]  # the module (jaxmi.metrics exports the function under its name)
  rng = np.random.default_rng(0)
  points = rng.normal(size=(50, 8))
  whole = np.sort(prdc_lib.pairwise_distances(points, points), axis=1)[:, 3]
  shapes = []
  original = prdc_lib.pairwise_sq_distances
  monkeypatch.setattr(prdc_lib, "pairwise_sq_distances", lambda a, b: shapes.append((len(a), len(b))) or original(a, b))
  blocked = prdc_lib.kth_neighbour_radii(points, 3, block_bytes=8 * 50 * 7)  # 7 rows of 50 distances per block
  np.testing.assert_array_equal(blocked, whole)
  assert max(rows for rows, _ in shapes) == 7 and sum(rows for rows, _ in shapes) == 50


def test_prdc_radii_of_a_set_seen_before_are_not_recomputed(monkeypatch):
  """An attack's evaluation and its prior baseline's, and every attack of a sweep on one evaluation model, judge
  against the same private set: at 30,000 MNIST images its radii cost about a minute each time. They are kept by
  content: the same points are not recomputed; a changed point is."""
  prdc_lib = sys.modules[prdc.__module__]
  points = np.random.default_rng(1).normal(size=(40, 6))
  first = prdc_lib.kth_neighbour_radii(points, 3)
  calls = []
  original = prdc_lib.pairwise_sq_distances
  monkeypatch.setattr(prdc_lib, "pairwise_sq_distances", lambda a, b: calls.append(len(a)) or original(a, b))
  again = prdc_lib.kth_neighbour_radii(points.copy(), 3)
  assert calls == [] and np.array_equal(again, first)
  again[0] = -1.0  # the caller's copy: the kept radii stay as they were
  assert np.array_equal(prdc_lib.kth_neighbour_radii(points, 3), first) and calls == []
  moved = points.copy()
  moved[5, 2] += 1.0
  changed = prdc_lib.kth_neighbour_radii(moved, 3)
  assert calls == [40] and not np.array_equal(changed, first)
  assert np.array_equal(prdc_lib.kth_neighbour_radii(points, 4), np.sqrt(np.sort(original(points, points), 1)[:, 4]))


def test_kept_values_are_the_last_few_used_and_belong_to_their_owner():
  """The evaluation caches' one rule: at most ``entries`` values, the least recently used dropped first, and a value
  kept for one owner (a feature function) is never handed to another under the same key."""
  from jaxmi.records import Kept

  kept, computed = Kept(2), []

  def compute(name):
    return lambda: computed.append(name) or name.upper()

  assert kept.get("a", compute("a")) == "A" and kept.get("b", compute("b")) == "B"
  assert kept.get("a", compute("a")) == "A" and computed == ["a", "b"]  # kept, and now the most recent
  kept.get("c", compute("c"))  # drops b, the least recently used
  assert len(kept) == 2 and kept.get("a", compute("a")) == "A" and computed == ["a", "b", "c"]
  assert kept.get("b", compute("b")) == "B" and computed == ["a", "b", "c", "b"]
  one, other = object(), object()
  assert kept.get("f", compute("f"), owner=one) == "F" and kept.get("f", compute("g"), owner=one) == "F"
  assert kept.get("f", compute("g"), owner=other) == "G" and computed[-2:] == ["f", "g"]
  with pytest.raises(ValueError, match="entries"):
    Kept(0)


def test_prdc_is_absent_when_a_set_has_no_kth_neighbour():
  assert prdc(np.zeros((3, 2)), np.ones((10, 2)), k=3) is None
  assert prdc(np.ones((10, 2)), np.zeros((3, 2)), k=3) is None


# -- Frechet distance ------------------------------------------------------------------------------------------


def box(half_sides, centre):
  """The 2^D vertices of a box: sample mean ``centre``, sample covariance (ddof=1) diag(h^2 * 2^D / (2^D - 1))."""
  d = len(half_sides)
  signs = np.array(np.meshgrid(*[[-1.0, 1.0]] * d)).reshape(d, -1).T
  return centre + signs * np.asarray(half_sides, np.float64)


def test_frechet_distance_equals_the_closed_form_for_commuting_covariances():
  h1, h2 = np.array([1.0, 2.0, 3.0]), np.array([2.0, 0.5, 1.0])
  mu1, mu2 = np.array([0.0, 1.0, -1.0]), np.array([1.0, 1.0, 2.0])
  # Diagonal sample covariances c h^2 (c = 8/7): tr(S1) + tr(S2) - 2 tr sqrt(S1 S2) = c sum (h1 - h2)^2.
  expected = np.sum((mu1 - mu2) ** 2) + 8 / 7 * np.sum((h1 - h2) ** 2)
  assert metrics.frechet_distance(box(h1, mu1), box(h2, mu2)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_equals_pytorch_fids_formula_for_general_covariances():
  """tr sqrt(S1 S2) = tr sqrt(S1^1/2 S2 S1^1/2) (similar matrices), the latter symmetric: an eigh closed form."""
  rng = np.random.default_rng(0)
  a = rng.normal(size=(40, 5)) @ rng.normal(size=(5, 5))
  b = rng.normal(size=(30, 5)) @ rng.normal(size=(5, 5)) + 0.5
  s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  w, v = np.linalg.eigh(s1)
  root1 = v @ np.diag(np.sqrt(w)) @ v.T
  tr_sqrt = np.sum(np.sqrt(np.linalg.eigvalsh(root1 @ s2 @ root1)))
  expected = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
  assert metrics.frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)


# -- the reference's 64 -> 112 resize --------------------------------------------------------------------------


def test_pil_resize_is_low2high():
  rng = np.random.default_rng(0)
  images = rng.uniform(0, 1, (3, 64, 64, 3)).astype(np.float32)
  images[0, 0, 0] = [0.999, 1.0, 0.0]  # ToPILImage truncates: 0.999 * 255 = 254.7 -> 254, not 255
  got = metrics.pil_resize(images, (112, 112))
  assert got.shape == (3, 112, 112, 3) and got.dtype == np.float32
  for img, out in zip(images, got):
    u8 = (img * np.float32(255)).astype(np.uint8)
    pil = Image.fromarray(u8, mode="RGB").resize((112, 112), Image.BILINEAR)
    np.testing.assert_array_equal(out, np.asarray(pil, np.float32) / np.float32(255))
  assert (images[0, 0, 0] * np.float32(255)).astype(np.uint8).tolist() == [254, 255, 0]
  # Grey images go through PIL mode L; uint8 images are used as they are.
  grey = (rng.uniform(0, 1, (2, 64, 64, 1)) * 255).astype(np.uint8)
  out = metrics.pil_resize(grey, (112, 112))
  for img, o in zip(grey, out):
    expected = np.asarray(Image.fromarray(img[..., 0], mode="L").resize((112, 112), Image.BILINEAR), np.float32)
    np.testing.assert_array_equal(o[..., 0], expected / np.float32(255))
  # Not the in-graph bilinear: the uint8 round trip differs from it by up to a few /255.
  bilinear = np.asarray(jax.image.resize(jnp.asarray(images), (3, 112, 112, 3), "bilinear"))
  assert 0 < np.abs(got - bilinear).max() < 0.05


def _with_shape(ev):
  """``evaluator()`` of test_metrics with a 4x8 input (reconstructions are 2x4)."""
  return SimpleNamespace(**{**vars(ev), "image_shape": (4, 8, 1)})


@pytest.mark.parametrize("resize", ["pil", "bilinear"])
def test_evaluation_model_gets_pil_resized_images_by_default(monkeypatch, resize):
  priv_images, priv_labels = private_set()
  seen = []
  outputs = metrics.classifier_outputs

  def spy(ev, images, *args, **kwargs):
    seen.append(np.asarray(images))
    return outputs(evaluator(), np.asarray(images)[:, :2, :4] if np.asarray(images).shape[1] == 4 else images)

  monkeypatch.setattr(metrics, "classifier_outputs", spy)
  kwargs = {} if resize == "pil" else {"resize": "bilinear"}
  metrics.evaluate_inversion(result(), _with_shape(evaluator()), priv_images, priv_labels, **kwargs)
  flat = RECON.reshape(6, 2, 4, 1).astype(np.float32)
  attacked = priv_images[np.isin(priv_labels, [2, 5])]
  if resize == "pil":
    np.testing.assert_array_equal(seen[0], metrics.pil_resize(flat, (4, 8)))
    np.testing.assert_array_equal(seen[1], metrics.pil_resize(attacked, (4, 8)))
  else:  # left to classifier_outputs' in-graph resize
    np.testing.assert_array_equal(seen[0], flat)
    np.testing.assert_array_equal(seen[1], attacked)


def test_images_of_the_evaluation_models_size_are_never_pil_resized(monkeypatch):
  monkeypatch.setattr(metrics, "pil_resize", lambda *a: pytest.fail("pil_resize called on images of the right size"))
  priv_images, priv_labels = private_set()
  m = metrics.evaluate_inversion(result(), evaluator(), priv_images, priv_labels)
  assert m["acc1_all_restarts_mean"] == pytest.approx(1 / 3)


# -- the papers' FID and PRDC inputs -----------------------------------------------------------------------------


class StandInFeatures:
  """Inception's place: features = the first 2 pixels (uint8 / 255 as the real extractor), inputs recorded."""

  space = "inception-v3"

  def __init__(self):
    self.seen = []

  def __call__(self, images):
    images = np.asarray(images)
    self.seen.append(images)
    x = images.astype(np.float64) / 255.0 if images.dtype == np.uint8 else images.astype(np.float64)
    return x.reshape(len(x), -1)[:, :2]


def test_fid_uses_only_successful_reconstructions_and_the_attacked_identities_private_images():
  priv_images, priv_labels = private_set()
  features = StandInFeatures()
  m = metrics.evaluate_inversion(result(), evaluator(), priv_images, priv_labels, fid_features=features)
  rec, priv = features.seen
  np.testing.assert_array_equal(rec.reshape(6, 8), RECON.astype(np.float32).reshape(6, 8))  # all, identity-major
  attacked = np.isin(priv_labels, [2, 5])
  np.testing.assert_array_equal(priv, priv_images[attacked])  # not the decoys of classes 0 and 3
  success = TOP1.reshape(-1)  # identity 0 restart 0 and identity 1 restart 1
  rec_f, priv_f = features(rec), features(priv)
  assert m["fid"] == pytest.approx(metrics.frechet_distance(rec_f[success], priv_f))
  assert m["fid"] != pytest.approx(metrics.frechet_distance(rec_f, priv_f))  # all reconstructions would differ
  assert m["fid_feature_space"] == "inception-v3" and m["fid_successful_samples"] == 2 == m["successful_samples"]
  # PRDC: ALL reconstructions vs the attacked identities' private images, in the same features, k = 3.
  assert m["prdc"] == pytest.approx(prdc(priv_f, rec_f, 3)) and m["prdc_k"] == 3
  assert m["prdc_feature_space"] == "inception-v3"
  # The evaluation-model feature FID stays as it was, now labelled by its own key.
  assert m["feature_fid_space"] == "evaluation-model features"
  plain = metrics.evaluate_inversion(result(), evaluator(), priv_images, priv_labels)
  assert m["feature_fid"] == plain["feature_fid"]


def test_without_inception_there_is_no_fid_and_prdc_is_in_evaluation_features(monkeypatch):
  priv_images, priv_labels = private_set()
  m = metrics.evaluate_inversion(result(), evaluator(), priv_images, priv_labels)
  assert "fid" not in m and m["fid_feature_space"] == "evaluation-model features"
  # evaluation features = 2 * pixels (test_metrics' evaluator)
  rec_f = 2.0 * RECON.reshape(6, 8).astype(np.float32)
  priv_f = 2.0 * priv_images.reshape(-1, 8)[np.isin(priv_labels, [2, 5])].astype(np.float32) / np.float32(255)
  assert m["prdc"] == pytest.approx(prdc(priv_f, rec_f, 3), abs=1e-9)
  assert m["prdc_feature_space"] == "evaluation-model features"


def test_fid_is_absent_with_fewer_than_two_successes():
  priv_images, priv_labels = private_set()
  one = result(RECON[:, :1], np.array([0, 0]), np.ones((2, 1)))  # only identity 0 restart 0 is right
  m = metrics.evaluate_inversion(one, evaluator(), priv_images, priv_labels, fid_features=StandInFeatures())
  assert m["fid"] is None and m["fid_successful_samples"] == 1
  assert m["prdc"] is None  # 2 reconstructions: no 3rd neighbour


# -- the reference's std over restarts ---------------------------------------------------------------------------


def test_protocol_std_is_per_batch_of_60_identities_then_averaged():
  """LOMMA's accuracy(): per batch of 60 identities, statistics.stdev over the 5 restarts of the batch's accuracy,
  then the mean over batches. The std over restarts of the accuracy over all identities is another number."""
  rng = np.random.default_rng(0)
  hits = rng.uniform(size=(120, 5)) < np.r_[np.full(60, 0.2), np.full(60, 0.9)][:, None]
  expected = np.mean([statistics.stdev(hits[b : b + 60].mean(0).tolist()) for b in (0, 60)])
  assert metrics.batch_std(hits) == pytest.approx(expected, rel=1e-12)
  assert metrics.batch_std(hits) != pytest.approx(metrics.sample_std(hits.mean(0)), rel=0.01)
  # At most 60 identities: one batch, the plain std over restarts (every run before the protocol's size).
  assert metrics.batch_std(hits[:40]) == pytest.approx(metrics.sample_std(hits[:40].mean(0)), rel=1e-12)
  assert metrics.batch_std(hits[:, :1]) is None


def test_evaluate_inversion_reports_the_protocol_std():
  priv_images, priv_labels = private_set()
  m = metrics.evaluate_inversion(result(), evaluator(), priv_images, priv_labels)
  assert m["acc1_protocol_std"] == pytest.approx(m["acc1_all_restarts_std"])  # 2 identities: one batch
  assert m["acc5_protocol_std"] == pytest.approx(metrics.sample_std(TOP5.mean(0)))


# -- results.json and Eval_results.csv ---------------------------------------------------------------------------


def eval_row(tmp_path, **summary):
  base = {
    "successful_samples": 3,
    "acc1_all_restarts_mean": 0.5,
    "acc1_all_restarts_std": 0.1,
    "acc5_all_restarts_mean": 0.7,
    "acc5_all_restarts_std": 0.2,
    "knn_dist_all_restarts": 4.0,
    "feature_fid": 9.0,
    "fid_feature_space": "evaluation-model features",
  }
  attack_exp.write_eval_results(Workdir.of(tmp_path), attack_exp.AttackConfig(), {**base, **summary})
  with open(tmp_path / "Eval_results.csv") as f:
    (row,) = list(csv.DictReader(f))
  return row


def test_eval_results_fid_only_in_inception_features(tmp_path):
  assert eval_row(tmp_path)["fid"] == ""  # the evaluation-model feature FID is not the papers'
  row = eval_row(tmp_path, fid=12.5, fid_feature_space="inception-v3", acc1_protocol_std=0.3, acc5_protocol_std=0.4)
  assert float(row["fid"]) == 12.5 and float(row["std"]) == 0.3 and float(row["std5"]) == 0.4
  assert eval_row(tmp_path, fid=None, fid_feature_space="inception-v3")["fid"] == ""


def test_run_attack_with_fid_weights_writes_the_papers_fid(tiny, tmp_path, monkeypatch):
  """The wiring: evaluation.fid_weights -> the extractor for the attack and its prior baseline -> results.json's
  fid and Eval_results.csv's fid column. A stand-in takes Inception's place (its 24M weights are the slow tier's)."""
  root, splits = tiny
  weights = tmp_path / "pt_inception.pth"
  weights.write_bytes(b"stand-in")
  loaded, made = [], []
  monkeypatch.setattr(attack_exp, "load_fid_weights", lambda path: loaded.append(str(path)) or {})

  def features(variables):
    made.append(StandInFeatures())
    return made[-1]

  monkeypatch.setattr(attack_exp, "InceptionFeatures", features)
  cfg = tiny_attack(root)
  cfg = dataclasses.replace(cfg, evaluation=dataclasses.replace(cfg.evaluation, fid_weights=str(weights)))
  summary = run_and_load(cfg, tmp_path / "run", splits)
  assert loaded == [str(weights)] and len(made) == 1
  results = json.loads((tmp_path / "run" / "results.json").read_text())
  assert results["fid_feature_space"] == "inception-v3" and results["feature_fid_space"] == "evaluation-model features"
  assert set(results["prdc"]) == {"precision", "recall", "density", "coverage"}
  assert "fid" in results["prior_baseline"] and results["prior_baseline"]["fid_feature_space"] == "inception-v3"
  with open(tmp_path / "run" / "Eval_results.csv") as f:
    (row,) = list(csv.DictReader(f))
  assert row["fid"] == ("" if summary["fid"] is None else str(summary["fid"]))
  # The attack state's fingerprint ignores how the result is judged: a run resumes under another evaluation.
  variables = {"x": np.zeros(2)}
  assert attack_exp.config_fingerprint(cfg, variables) == attack_exp.config_fingerprint(tiny_attack(root), variables)


def run_and_load(cfg, workdir, splits):
  return attack_exp.run_attack(cfg, workdir, splits=splits, progress=False)


def test_missing_fid_weights_are_refused_before_anything_is_written(tiny, tmp_path):
  root, splits = tiny
  cfg = tiny_attack(root)
  cfg = dataclasses.replace(cfg, evaluation=dataclasses.replace(cfg.evaluation, fid_weights=str(tmp_path / "no.pth")))
  with pytest.raises(ConfigError, match=r"^evaluation\.fid_weights: .*no\.pth: no such file") as e:
    attack_exp.run_attack(cfg, tmp_path / "run", splits=splits, progress=False)
  assert "\n" not in str(e.value) and not (tmp_path / "run").exists()


# -- pytorch-fid's weights through jaxmi's importer (slow tier) ----------------------------------------------------


def write_safetensors(path, tensors):
  """A safetensors file (8-byte header length, JSON header, raw little-endian data), written by hand."""
  header, blobs, offset = {}, [], 0
  for name, array in tensors.items():
    data = np.ascontiguousarray(array, "<f4").tobytes()
    header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
    blobs.append(data)
    offset += len(data)
  text = json.dumps(header).encode()
  text += b" " * (-len(text) % 8)
  path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def torch_state_dict(variables):
  """FIDInceptionV3's variables under pytorch-fid's keys: ``a.b.conv.weight`` [O, I, kh, kw], ``a.b.bn.*``."""
  out = {}

  def walk(params, stats, path):
    if "conv" in params:
      prefix = ".".join(path)
      out[f"{prefix}.conv.weight"] = np.asarray(params["conv"]["kernel"]).transpose(3, 2, 0, 1)
      out[f"{prefix}.bn.weight"] = np.asarray(params["bn"]["scale"])
      out[f"{prefix}.bn.bias"] = np.asarray(params["bn"]["bias"])
      out[f"{prefix}.bn.running_mean"] = np.asarray(stats["bn"]["mean"])
      out[f"{prefix}.bn.running_var"] = np.asarray(stats["bn"]["var"])
      return
    for name in params:
      walk(params[name], stats[name], (*path, name))

  walk(variables["params"], variables["batch_stats"], ())
  return out


@pytest.mark.slow  # 24M parameters initialised, written, read back and run at 299 px: ~1 min of CPU
def test_fid_weights_file_gives_the_networks_features(tmp_path):
  from jaxmi.metrics.fid import InceptionFeatures, load_fid_weights
  from jaxmi.nets.inception import FIDInceptionV3

  module = FIDInceptionV3(image_size=75)
  variables = jax.jit(module.init)(jax.random.key(0), jnp.zeros((1, 75, 75, 3)))
  rng = np.random.default_rng(0)
  stats = jax.tree.map(lambda x: rng.uniform(0.5, 1.5, x.shape).astype(np.float32), variables["batch_stats"])
  variables = {"params": variables["params"], "batch_stats": stats}  # non-trivial running statistics
  path = tmp_path / "pt_inception.safetensors"
  write_safetensors(path, torch_state_dict(variables))
  loaded = load_fid_weights(path)
  jax.tree.map(np.testing.assert_array_equal, loaded, jax.tree.map(np.asarray, variables))
  images = rng.uniform(0, 1, (3, 64, 64, 3)).astype(np.float32)
  features = InceptionFeatures(loaded, batch_size=2)  # 299 px, as pytorch-fid; the last batch is padded
  got = features(images)
  assert got.shape == (3, 2048)
  direct = np.asarray(jax.jit(FIDInceptionV3().apply)(variables, jnp.asarray(images)))
  np.testing.assert_allclose(got, direct, rtol=1e-4, atol=1e-5)
  assert features(images) is got  # the second call (the prior baseline's private images) is not recomputed


def test_an_evaluation_against_a_private_set_seen_before_reuses_its_features(monkeypatch):
  """The attack's and its prior baseline's evaluations judge against the same private images: the evaluation model
  runs on them once (kept by content: the evaluator's variables and the images), and again for other images or
  another evaluator."""
  import jaxmi.metrics.attack as attack_metrics
  from jaxmi.attacks.engine import InversionResult
  from jaxmi.nets import ModelConfig, build_classifier, init_variables
  from jaxmi.train.inference import classifier_outputs

  class Evaluator:  # what evaluate_inversion reads of a loaded classifier
    def __init__(self, seed):
      self.module = build_classifier(ModelConfig(arch="cnn", width=2, feature_dim=4), 3)
      self.variables = init_variables(self.module, jax.random.PRNGKey(seed), (8, 8, 1))
      self.num_classes, self.image_shape = 3, (8, 8, 1)

  rng = np.random.default_rng(0)
  private = rng.uniform(size=(30, 8, 8, 1)).astype(np.float32)
  labels = np.repeat(np.arange(3), 10)
  result = InversionResult(
    labels=np.arange(3),
    latents=np.zeros((3, 5, 2), np.float32),
    images=rng.uniform(size=(3, 5, 8, 8, 1)).astype(np.float32),
    target_confidence=np.ones((3, 5), np.float32),
    best_restart=np.zeros(3, np.int32),
    loss_curve=np.zeros(1),
    loss_parts={},
  )
  seen = []
  monkeypatch.setattr(
    attack_metrics, "classifier_outputs", lambda m, x: seen.append(len(x)) or classifier_outputs(m, x)
  )
  ev = Evaluator(0)
  first = attack_metrics.evaluate_inversion(result, ev, private, labels)
  assert seen == [15, 30]  # the reconstructions, then the private images
  again = attack_metrics.evaluate_inversion(result, ev, private.copy(), labels)
  assert seen == [15, 30, 15] and again["knn_dist"] == first["knn_dist"] and again["prdc"] == first["prdc"]
  attack_metrics.evaluate_inversion(result, Evaluator(1), private, labels)  # another evaluator: its own features
  other = private.copy()
  other[0] += 0.5
  attack_metrics.evaluate_inversion(result, ev, other, labels)  # another private set
  assert seen == [15, 30, 15, 15, 30, 15, 30]

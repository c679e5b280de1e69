"""`pipeedge-coord eval` and `dataset imagenet-prepare` on tiny datasets made here (nothing
downloaded), checked against the same model's predictions computed in this process."""

from __future__ import annotations

import io
import json
import random
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeedge import models
from pipeedge._proto import stage_pb2 as pb
from pipeedge.apps import eval as eval_mod
from pipeedge.apps.datasets import ImageFolder, load_cola
from pipeedge.client import PipelineClient
from pipeedge.coordinator.cli import main
from pipeedge.coordinator.inputs import image_inputs, text_inputs
from pipeedge.coordinator.local_cluster import LocalCluster
from pipeedge.coordinator.stage_control import StageControl
from pipeedge.pipeline_file import Pipeline
from pipeedge.records import StageInfo, WeightsSource

Image = pytest.importorskip("PIL.Image")

TINY_VIT = "pipeedge/tiny-vit"
COLA_MODEL = "pipeedge/tiny-bert-cola"   # tiny-bert with a 2-label head, sent as config JSON
WORDS = ("the a cat dog runs ran quickly book read john mary saw likes is was on under table "
         "big small green idea sleeps furiously").split()


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = LocalCluster(2, threads=1, workdir=tmp_path_factory.mktemp("eval-cluster"))
    with c:
        yield c


def assign_chain(cluster, model, ranges, *, config_json="", seed=0, microbatch=8) -> Pipeline:
    """Assign stages last to first (what deploy does), with an optional config override."""
    stages = cluster.stages[:len(ranges)]
    next_hop = ""
    for s, (first, last) in reversed(list(zip(stages, ranges))):
        ctl = StageControl(s.name, s.address)
        ctl.assign(pb.AssignRequest(stage_name=s.name, model_name=model,
                                    model_config_json=config_json, first_layer=first,
                                    last_layer=last, max_microbatch=microbatch, next_hop=next_hop,
                                    weights=pb.WeightSource(random_seed=seed)))
        ctl.close()
        next_hop = s.address
    pipeline = Pipeline(model=model, microbatch=microbatch,
                        weights=WeightsSource("random", seed=seed),
                        stages=tuple(StageInfo(s.name, s.address, a, b)
                                     for s, (a, b) in zip(stages, ranges)),
                        model_config_json=config_json)
    pipeline.save(cluster.workdir / "pipeline.json")
    return pipeline


def full_model(model, config_json=None, seed=0):
    info = models.model_info(model, config_json)
    return models.build_shard(info, 1, info.num_layers,
                              models.load_shard_state(info, 1, info.num_layers, seed))


def logits_of(model, batches):
    with torch.inference_mode():
        return torch.cat([model(b)["logits"] for b in batches])


def assert_clear_margins(logits):
    """The pipeline and this process differ by ~1e-6: no prediction may hinge on less."""
    top2 = logits.topk(2, dim=-1).values
    assert (top2[:, 0] - top2[:, 1]).min().item() > 1e-4, "near-tie: pick another seed"


# -- ImageNet --------------------------------------------------------------------------------------
def _jpeg(seed: int) -> bytes:
    g = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(32, 32, 3, generator=g) * 255).to(torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _synsets(id_to_wnid: dict[int, str]):
    """meta.mat's `synsets` struct array: the leaves plus one ancestor (which must be ignored)."""
    dt = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("gloss", "O"),
          ("num_children", "O"), ("children", "O"), ("wordnet_height", "O"),
          ("num_train_images", "O")]
    rows = [(i, w, f"class {i}", "", 0, np.zeros((0,)), 0, 2) for i, w in id_to_wnid.items()]
    rows.append((len(rows) + 1, "n00001740", "entity", "", 2, np.array([1, 2]), 18, 0))
    return np.array(rows, dtype=dt)


def _ilsvrc_archives(src: Path, images: list[bytes], truth_ids: list[int],
                     id_to_wnid: dict[int, str], *, with_meta: bool) -> None:
    """ILSVRC2012_img_train.tar (tar of per-class tars), _img_val.tar and the devkit tar.gz."""
    src.mkdir(parents=True)
    with tarfile.open(src / "ILSVRC2012_img_train.tar", "w") as train:
        for k, wnid in enumerate(sorted(id_to_wnid.values())[:3]):
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as t:
                for j in range(2):
                    _add(t, f"{wnid}_{j}.JPEG", _jpeg(1000 + 10 * k + j))
            _add(train, f"{wnid}.tar", inner.getvalue())
    order = list(range(len(images)))
    random.Random(1).shuffle(order)  # the archive's order is not the numbering's
    with tarfile.open(src / "ILSVRC2012_img_val.tar", "w") as val:
        for i in order:
            _add(val, f"ILSVRC2012_val_{i + 1:08d}.JPEG", images[i])
    with tarfile.open(src / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as devkit:
        _add(devkit, "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt",
             "".join(f"{i}\n" for i in truth_ids).encode())
        if with_meta:
            from scipy.io import savemat

            buf = io.BytesIO()
            savemat(buf, {"synsets": _synsets(id_to_wnid)})
            _add(devkit, "ILSVRC2012_devkit_t12/data/meta.mat", buf.getvalue())


def test_imagenet_prepare_then_eval_top1(cluster, tmp_path):
    pipeline = assign_chain(cluster, TINY_VIT, [(1, 3), (4, 12)], microbatch=4)
    n, right = 22, 15
    images = [_jpeg(s) for s in range(n)]
    staging = tmp_path / "staging"
    staging.mkdir()
    for i, data in enumerate(images):
        (staging / f"{i}.JPEG").write_bytes(data)
    logits = logits_of(full_model(TINY_VIT), [image_inputs([staging / f"{i}.JPEG"], TINY_VIT)
                                              for i in range(n)])
    assert_clear_margins(logits)
    preds = logits.argmax(-1).tolist()
    # 10 wnids; ILSVRC2012_IDs deliberately not in wnid order. Class index = sorted position.
    wnids = sorted(f"n{v:08d}" for v in random.Random(7).sample(range(10**7), 10))
    id_to_wnid = {i + 1: w for i, w in enumerate(random.Random(3).sample(wnids, 10))}
    id_of = {w: i for i, w in id_to_wnid.items()}
    labels = [p if i < right else (p + 1) % 10 for i, p in enumerate(preds)]
    truth = [id_of[wnids[label]] for label in labels]

    src, out = tmp_path / "ImageNet", tmp_path / "prepared"
    _ilsvrc_archives(src, images, truth, id_to_wnid, with_meta=True)
    code, text = run("dataset", "imagenet-prepare", src, "--out", out, "--no-progress")
    assert code == 0, text
    assert "train: 6 images in 3 classes" in text and f"val: {n} images" in text, text
    for k, wnid in enumerate(sorted(id_to_wnid.values())[:3]):
        assert sorted(p.name for p in (out / "train" / wnid).iterdir()) == \
            [f"{wnid}_0.JPEG", f"{wnid}_1.JPEG"]
    for i, label in enumerate(labels):
        path = out / "val" / wnids[label] / f"ILSVRC2012_val_{i + 1:08d}.JPEG"
        assert path.read_bytes() == images[i], i
    # Not every class has validation images here: classes.txt keeps the full set's indices.
    assert len(list((out / "val").iterdir())) < 10
    assert (out / "classes.txt").read_text().split() == wnids

    code, text = run("eval", out, "--pipeline", cluster.workdir / "pipeline.json",
                     "--no-progress", "-b", "4")
    assert code == 0, text
    assert f"top-1 accuracy {right / n:.2%} ({right}/{n})" in text, text

    # Same set, folders named by class index: same labels, same accuracy (API, batch 3).
    by_index = tmp_path / "by-index"
    for p in (out / "val").rglob("*.JPEG"):
        dest = by_index / str(wnids.index(p.parent.name)) / p.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(p.read_bytes())
    folder = ImageFolder.open(by_index)
    with PipelineClient(pipeline.entry) as client:
        result = eval_mod.evaluate_images(client, folder, TINY_VIT, batch=3,
                                          progress=False)
    assert result.correct == right and result.items == n
    assert len(folder.subset(7, seed=1)) == 7 and folder.subset(7, seed=1) == \
        folder.subset(7, seed=1)

    # Without scipy's meta.mat: a wnid list in ILSVRC2012_ID order gives the same layout.
    src2, out2 = tmp_path / "ImageNet2", tmp_path / "prepared2"
    _ilsvrc_archives(src2, images, truth, id_to_wnid, with_meta=False)
    wnid_list = tmp_path / "wnids.txt"
    wnid_list.write_text("".join(f"{id_to_wnid[i]}\n" for i in range(1, 11)))
    code, text = run("dataset", "imagenet-prepare", src2, "--out", out2, "--wnids", wnid_list,
                     "--no-progress")
    assert code == 0, text
    assert sorted(p.relative_to(out2) for p in (out2 / "val").rglob("*")) == \
        sorted(p.relative_to(out) for p in (out / "val").rglob("*"))
    code, text = run("dataset", "imagenet-prepare", src2, "--out", tmp_path / "x",
                     "--no-progress")
    assert code == 2 and "meta.mat is not in" in text, text


# -- CoLA ------------------------------------------------------------------------------------------
def _tokenizer_dir(path: Path) -> Path:
    path.mkdir()
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
                                               *WORDS]) + "\n")
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 128}))
    return path


def test_cola_matthews_matches_in_process(cluster, tmp_path):
    config = dict(models.model_info("pipeedge/tiny-bert").config)
    # A wider init than BERT's 0.02 makes the random classifier's decisions depend on the input.
    config.update(architectures=["BertForSequenceClassification"], num_labels=2,
                  initializer_range=0.5)
    config_json = json.dumps(config)
    seed = 4
    assign_chain(cluster, COLA_MODEL, [(1, 4), (5, 8)], config_json=config_json, seed=seed)
    tok = _tokenizer_dir(tmp_path / "tok")
    rng = random.Random(0)
    sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9)))
                 for _ in range(37)]
    batch = 8  # eval pads per microbatch: the reference uses the same microbatches
    logits = logits_of(full_model(COLA_MODEL, config_json, seed),
                       [text_inputs(sentences[i:i + batch], tok)
                        for i in range(0, len(sentences), batch)])
    assert_clear_margins(logits)
    preds = logits.argmax(-1).tolist()
    assert 0 < sum(preds) < len(preds), "the random model must predict both classes"
    labels = [1 - p if i % 3 == 0 else p for i, p in enumerate(preds)]
    expected = float(np.corrcoef(labels, preds)[0, 1])  # Pearson on 0/1 = Matthews
    assert abs(expected) > 0.1
    tsv = tmp_path / "in_domain_dev.tsv"
    tsv.write_text("".join(f"gj04\t{y}\t{'' if y else '*'}\t{s}\n"
                           for y, s in zip(labels, sentences)))
    assert [e.label for e in load_cola(tsv)] == labels

    code, text = run("eval", tsv, "--pipeline", cluster.workdir / "pipeline.json",
                     "--tokenizer", tok, "--no-progress", "-b", batch)
    assert code == 0, text
    got = float(re.search(r"Matthews correlation (-?[0-9.]+)", text).group(1))
    assert got == pytest.approx(expected, abs=1e-4), text
    correct = sum(p == y for p, y in zip(preds, labels))
    assert f"({correct}/{len(labels)})" in text

    assert eval_mod.matthews_corrcoef([1, 1, 0, 0], [1, 1, 1, 1]) == 0.0
    assert eval_mod.matthews_corrcoef([1, 0, 1, 0], [1, 0, 1, 0]) == 1.0
    bad = tmp_path / "test.tsv"
    bad.write_text("index\tsentence\n0\tA sentence.\n")
    code, text = run("eval", bad, "--pipeline", cluster.workdir / "pipeline.json",
                     "--tokenizer", tok, "--no-progress")
    assert code == 2 and "no labels" in text, text

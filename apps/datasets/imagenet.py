"""ImageNet-style image folders, and the ILSVRC2012 archives turned into one.

An image folder holds one subfolder per class. Labels follow torchvision's ImageFolder: the
sorted folder names (WordNet ids such as n01440764) are classes 0..N-1; folders named by number
(0, 1, ..., 999) are that class index instead. A `classes` file (one name per line, line k =
class k) overrides both; `classes.txt` in the folder or its parent is used when present, so a
split holding only some classes keeps the full set's indices (`prepare_ilsvrc2012` writes one
with all 1000 wnids sorted).

`prepare_ilsvrc2012` does what the seed's tools/imagenet_preprocess.py did: it extracts
ILSVRC2012_img_train.tar (a tar of per-class tars) into train/<wnid>/, and ILSVRC2012_img_val.tar
into val/<wnid>/ using the devkit's ground truth (data/ILSVRC2012_validation_ground_truth.txt:
line i holds the ILSVRC2012_ID of validation image i) and data/meta.mat (ILSVRC2012_ID -> wnid;
read with scipy). Without scipy, a wnids file (line k = wnid of ILSVRC2012_ID k, or lines
"ID WNID") replaces meta.mat. Archives are streamed; nothing is extracted twice into memory.
"""

from __future__ import annotations

import io
import random
import shutil
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
DEVKIT_TAR = "ILSVRC2012_devkit_t12.tar.gz"
DEVKIT_DIR = "ILSVRC2012_devkit_t12"
GROUND_TRUTH = "data/ILSVRC2012_validation_ground_truth.txt"
META = "data/meta.mat"
CLASSES_FILE = "classes.txt"  # every class's name in label order, beside train/ and val/


@dataclass(frozen=True)
class ImageFolder:
    root: Path
    classes: tuple[str, ...]                  # class k's folder name at index k
    samples: tuple[tuple[Path, int], ...]     # (image file, class index)

    @classmethod
    def open(cls, root: str | Path, *, classes_file: str | Path | None = None) -> ImageFolder:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {root} not found")
        dirs = sorted(d.name for d in root.iterdir() if d.is_dir())
        if not dirs:
            raise ValueError(f"{root} has no class subfolders; expected {root}/<wnid>/*.JPEG "
                             "(see `pipeedge-coord dataset imagenet-prepare`)")
        if classes_file is None:
            found = [f for f in (root / CLASSES_FILE, root.parent / CLASSES_FILE) if f.is_file()]
            classes_file = found[0] if found else None
        if classes_file:
            names = [ln.split()[0] for ln in Path(classes_file).read_text().splitlines()
                     if ln.strip()]
            unknown = [d for d in dirs if d not in names]
            if unknown:
                raise ValueError(f"{root} has class folders {unknown[:3]} not in {classes_file}")
            index = {n: i for i, n in enumerate(names)}
            classes = tuple(names)
        elif all(d.isdigit() for d in dirs):
            index = {d: int(d) for d in dirs}
            classes = tuple(str(i) for i in range(max(index.values()) + 1))
        else:
            index = {d: i for i, d in enumerate(dirs)}
            classes = tuple(dirs)
        samples = []
        for d in dirs:
            for f in sorted((root / d).rglob("*")):
                if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file():
                    samples.append((f, index[d]))
        if not samples:
            raise ValueError(f"{root} has class folders but no images ({sorted(IMAGE_SUFFIXES)})")
        return cls(root, classes, tuple(samples))

    def __len__(self) -> int:
        return len(self.samples)

    def subset(self, limit: int, *, seed: int = 0) -> ImageFolder:
        """`limit` samples drawn at random (the same ones for the same seed), over all classes."""
        if limit <= 0 or limit >= len(self.samples):
            return self
        picked = random.Random(seed).sample(range(len(self.samples)), limit)
        return ImageFolder(self.root, self.classes,
                           tuple(self.samples[i] for i in sorted(picked)))

    def batches(self, model, batch: int, directory: Path | None = None
                ) -> Iterator[tuple[dict[str, torch.Tensor], list[int]]]:
        """(preprocessed pixels, labels) per microbatch, with the `infer --image` preprocessing
        (`model`: a registry name or ModelInfo; `directory`: its preprocessor_config.json's)."""
        from pipeedge.coordinator.inputs import image_inputs

        for i in range(0, len(self.samples), batch):
            chunk = self.samples[i:i + batch]
            yield (image_inputs([p for p, _ in chunk], model, directory),
                   [label for _, label in chunk])


# -- ILSVRC2012 preparation -----------------------------------------------------------------------
@dataclass(frozen=True)
class PrepareReport:
    out: Path
    train_images: int = 0
    train_classes: int = 0
    val_images: int = 0
    val_classes: int = 0
    skipped: tuple[str, ...] = ()   # archives that were not there


def prepare_ilsvrc2012(src: str | Path, out: str | Path | None = None, *,
                       wnids_file: str | Path | None = None,
                       progress: Callable[[str, int | None], Callable[[int], None]] | None = None
                       ) -> PrepareReport:
    """Extract the ILSVRC2012 archives in `src` into `out`/train/<wnid>/ and `out`/val/<wnid>/.

    Args:
        src: folder holding ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar and the devkit
            (ILSVRC2012_devkit_t12.tar.gz or its extracted folder); either image archive may be
            missing (that split is skipped).
        out: where to write train/ and val/ (default: `src`).
        wnids_file: ILSVRC2012_ID -> wnid without scipy (line k = wnid of ID k, or "ID WNID").
        progress: `progress(description, total)` returns an `update(n)` callback.

    Returns:
        Counts of what was written.
    """
    src = Path(src)
    out = Path(out) if out else src
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not a folder; put the ILSVRC2012 archives in one")
    progress = progress or (lambda desc, total: (lambda n: None))
    have_train, have_val = (src / TRAIN_TAR).is_file(), (src / VAL_TAR).is_file()
    if not have_train and not have_val:
        raise FileNotFoundError(f"neither {TRAIN_TAR} nor {VAL_TAR} is in {src}; download them "
                                "from image-net.org (registration required)")
    skipped = tuple(name for name, have in ((TRAIN_TAR, have_train), (VAL_TAR, have_val))
                    if not have)
    if have_val:  # read the devkit first: a missing file fails before hours of extraction
        ids = [int(x) for x in _devkit_file(src, GROUND_TRUTH).decode().split()]
        wnid_of = (_wnids_from_file(Path(wnids_file)) if wnids_file
                   else _wnids_from_meta(_devkit_file(src, META)))
    train_images = train_classes = val_images = val_classes = 0
    out.mkdir(parents=True, exist_ok=True)
    if have_val:  # all classes, sorted: indices do not depend on which folders a split has
        (out / CLASSES_FILE).write_text("".join(f"{w}\n" for w in sorted(set(wnid_of.values()))))
    if have_train:
        train_images, train_classes = _extract_train(src / TRAIN_TAR, out / "train",
                                                     progress("train", None))
    if have_val:
        val_images, val_classes = _extract_val(src / VAL_TAR, out / "val", ids, wnid_of,
                                               progress("val", len(ids)))
    elif not (out / CLASSES_FILE).exists():
        wnids = sorted(d.name for d in (out / "train").iterdir() if d.is_dir())
        (out / CLASSES_FILE).write_text("".join(f"{w}\n" for w in wnids))
    return PrepareReport(out, train_images, train_classes, val_images, val_classes, skipped)


def _extract_train(archive: Path, dest: Path, update) -> tuple[int, int]:
    images, classes = 0, 0
    with tarfile.open(archive, mode="r|") as outer:  # streamed: ~138 GB never held at once
        for member in outer:
            if not member.isfile() or not member.name.endswith(".tar"):
                continue
            wnid = Path(member.name).stem
            folder = dest / wnid
            folder.mkdir(parents=True, exist_ok=True)
            classes += 1
            with tarfile.open(fileobj=outer.extractfile(member), mode="r|") as inner:
                for image in inner:
                    if image.isfile():
                        _write(inner, image, folder)
                        images += 1
                        update(1)
    return images, classes


def _extract_val(archive: Path, dest: Path, ids: list[int], wnid_of: dict[int, str],
                 update) -> tuple[int, int]:
    images, seen = 0, set()
    with tarfile.open(archive, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            name = Path(member.name).name          # ILSVRC2012_val_00000001.JPEG
            try:
                number = int(Path(name).stem.rsplit("_", 1)[1])
                wnid = wnid_of[ids[number - 1]]
            except (IndexError, ValueError, KeyError):
                raise ValueError(f"{archive.name}: {name} has no ground truth in the devkit "
                                 f"({len(ids)} labels); is it the ILSVRC2012 archive?") from None
            _write(tar, member, dest / wnid)
            seen.add(wnid)
            images += 1
            update(1)
    return images, len(seen)


def _write(tar: tarfile.TarFile, member: tarfile.TarInfo, folder: Path) -> None:
    """Write one archive member into `folder` under its base name (no path from the archive)."""
    folder.mkdir(parents=True, exist_ok=True)
    src = tar.extractfile(member)
    if src is None:  # not a regular file: nothing to copy
        return
    with src, open(folder / Path(member.name).name, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


def _devkit_file(src: Path, inner: str) -> bytes:
    """A file of the devkit, from its extracted folder or straight from the .tar.gz."""
    for folder in (src / DEVKIT_DIR, src):
        if (folder / inner).is_file():
            return (folder / inner).read_bytes()
    if (src / DEVKIT_TAR).is_file():
        with tarfile.open(src / DEVKIT_TAR, mode="r:gz") as tar:
            for member in tar:
                data = tar.extractfile(member) if member.isfile() else None
                if data is not None and member.name.endswith(inner):
                    return data.read()
    raise FileNotFoundError(f"the devkit's {inner} is not in {src}: add {DEVKIT_TAR} (from "
                            "image-net.org) or its extracted folder")


def _wnids_from_meta(data: bytes) -> dict[int, str]:
    try:
        from scipy.io import loadmat
    except ImportError:
        raise RuntimeError("reading the devkit's meta.mat needs scipy (pip install scipy); or "
                           "pass --wnids FILE listing the 1000 wnids in ILSVRC2012_ID order"
                           ) from None
    synsets = loadmat(io.BytesIO(data), squeeze_me=True)["synsets"]
    # Leaf synsets (no children) are the 1000 classes; the rest are WordNet ancestors.
    return {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets
            if int(s["num_children"]) == 0}


def _wnids_from_file(path: Path) -> dict[int, str]:
    out = {}
    for k, line in enumerate((ln for ln in path.read_text().splitlines() if ln.strip()), 1):
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            out[int(parts[0])] = parts[1]
        else:
            out[k] = parts[0]
    return out

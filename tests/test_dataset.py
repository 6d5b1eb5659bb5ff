"""Dataset audit: a clean dataset passes, each planted defect is caught with the right severity."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml
from PIL import Image

from exp3.dataset.audit import DatasetError, audit_dataset, label_path_for, list_split_images, read_data_yaml


@pytest.fixture()
def dataset(writable_data_yaml: Path) -> Path:
    """A private, writable copy of the tiny dataset; returns its data.yaml."""
    return writable_data_yaml


def _first_label(root: Path, split: str = "train") -> Path:
    return sorted((root / "labels" / split).glob("*.txt"))[0]


def _delete_label(root: Path) -> None:
    _first_label(root).unlink()


def _orphan_label(root: Path) -> None:
    (root / "labels" / "val" / "ghost.txt").write_text("0 0.5 0.5 0.1 0.1\n")


def _bad_class(root: Path) -> None:
    with _first_label(root).open("a") as handle:
        handle.write("42 0.5 0.5 0.1 0.1\n")


def _malformed(root: Path) -> None:
    with _first_label(root).open("a") as handle:
        handle.write("3 0.5 0.5\n")


def _out_of_bounds(root: Path, cx: float = 0.95) -> None:
    with _first_label(root).open("a") as handle:
        handle.write(f"1 {cx} 0.5 0.2 0.1\n")


def _corrupt_image(root: Path) -> None:
    image = sorted((root / "images" / "test").glob("*.jpg"))[0]
    image.write_bytes(image.read_bytes()[:200])


def _gif_named_jpg(root: Path) -> None:
    """A GIF under a .jpg name (PIL decodes it; Ultralytics skips it as 'Invalid image format GIF')."""
    image = sorted((root / "images" / "test").glob("*.jpg"))[0]
    Image.open(image).convert("P").save(image, format="GIF")


def _sixteen_bit_png(root: Path) -> None:
    """A thermal camera's 16-bit grayscale PNG in test (Ultralytics' cv2 scales it to 8 bits; Pillow's RGB conversion,
    which the occluded copies were made with, clipped it to white)."""
    import numpy as np

    image = sorted((root / "images" / "test").glob("*.jpg"))[0]
    gray = np.asarray(Image.open(image).convert("L"), dtype=np.uint16) * 257
    image.unlink()
    Image.fromarray(gray).save(image.with_suffix(".png"))


def _jpeg_with_trailer(root: Path) -> None:
    """A phone-style JPEG with bytes after its end marker (Ultralytics re-saves such a file in place)."""
    image = sorted((root / "images" / "train").glob("*.jpg"))[0]
    image.write_bytes(image.read_bytes() + b"trailer")


def _shared_id(root: Path) -> None:
    source = sorted((root / "images" / "val").glob("*.jpg"))[0]
    shutil.copyfile(source, root / "images" / "train" / source.name)
    shutil.copyfile(label_path_for(source), root / "labels" / "train" / f"{source.stem}.txt")


def _stem_repeated_in_split(root: Path) -> None:
    """A second camera's folder in the test split with an image of the same file name (Ultralytics accepts it)."""
    source = sorted((root / "images" / "test").glob("*.jpg"))[0]
    (root / "images" / "test" / "cam2").mkdir()
    (root / "labels" / "test" / "cam2").mkdir()
    flipped = Image.open(source).transpose(Image.Transpose.FLIP_LEFT_RIGHT)  # another picture, same stem
    flipped.save(root / "images" / "test" / "cam2" / source.name)
    shutil.copyfile(label_path_for(source), root / "labels" / "test" / "cam2" / f"{source.stem}.txt")


def _test_without_labels(root: Path) -> None:
    shutil.rmtree(root / "labels" / "test")


def _missing_test(root: Path) -> None:
    spec = yaml.safe_load((root / "data.yaml").read_text())
    del spec["test"]
    (root / "data.yaml").write_text(yaml.safe_dump(spec))


DEFECTS: dict[str, tuple[Callable[[Path], None], bool]] = {
    "image_without_label": (_delete_label, False),
    "label_without_image": (_orphan_label, False),
    "class_id_out_of_range": (_bad_class, True),
    "malformed_label_line": (_malformed, True),
    "box_out_of_bounds": (_out_of_bounds, True),
    "corrupt_image": (_corrupt_image, True),
    "image_skipped_by_ultralytics": (_gif_named_jpg, True),
    "jpeg_rewritten_by_ultralytics": (_jpeg_with_trailer, True),
    "image_not_8_bit": (_sixteen_bit_png, True),
    "image_id_shared_across_splits": (_shared_id, True),
    "image_id_repeated_in_split": (_stem_repeated_in_split, True),
    "missing_split": (_missing_test, True),
    "no_boxes_in_split": (_test_without_labels, True),
}


def test_clean_dataset_passes(dataset: Path) -> None:
    report = audit_dataset(dataset)
    assert report.problems == [] and not report.blocking
    assert report.splits["train"]["images"] == 8 and report.splits["test"]["images"] == 4
    assert report.splits["train"]["instances"] > 8
    assert len(report.fingerprint) == 16


def test_fingerprint_changes_with_content(dataset: Path) -> None:
    before = audit_dataset(dataset).fingerprint
    label = _first_label(dataset.parent)
    label.write_text(label.read_text().replace("0.", "0.0", 1))
    assert audit_dataset(dataset).fingerprint != before


@pytest.mark.parametrize("kind", sorted(DEFECTS))
def test_each_planted_defect_is_caught(dataset: Path, kind: str) -> None:
    plant, blocking = DEFECTS[kind]
    plant(dataset.parent)
    report = audit_dataset(dataset)
    assert report.counts.get(kind, 0) >= 1, report.counts
    assert report.blocking is blocking
    if kind == "image_id_shared_across_splits":
        assert "duplicate_image_across_splits" in report.counts  # identical bytes too
    if kind == "image_id_repeated_in_split":
        assert report.counts == {kind: 1}
        line = next(line for line in report.summary_lines() if kind in line)
        assert "images/test/cam2/" in line and " also at images/test/" in line and "rename one" in line


def test_images_ultralytics_would_skip_or_rewrite_are_those_its_check_image_refuses(dataset: Path) -> None:
    """The audit's rules are Ultralytics' (`check_image`, which also rewrites a JPEG without its end marker): a 9 px
    image is refused by both; the formats are its own list."""
    from ultralytics.data.utils import IMG_FORMATS, check_image

    from exp3.dataset.audit import MIN_IMAGE_SIDE, READABLE_FORMATS

    assert READABLE_FORMATS == IMG_FORMATS | {"jpeg2000"}
    image = sorted((dataset.parent / "images" / "test").glob("*.jpg"))[0]
    Image.open(image).resize((MIN_IMAGE_SIDE - 1, 40)).save(image)
    with pytest.raises(AssertionError, match="<10 pixels"):
        check_image(str(image))
    report = audit_dataset(dataset)
    assert report.counts == {"image_skipped_by_ultralytics": 1} and report.blocking
    assert "JPEG, 9 x 40 px" in report.problems[0].detail
    trailer = sorted((dataset.parent / "images" / "val").glob("*.jpg"))[0]
    trailer.write_bytes(trailer.read_bytes() + b"trailer")
    before = trailer.read_bytes()
    assert "corrupt JPEG restored" in check_image(str(trailer))[0] and trailer.read_bytes() != before  # in place


def test_a_split_lists_the_images_ultralytics_loads(dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ultralytics' own listing (`BaseDataset.get_img_files`) and exp3's agree: a phone's .mpo is an image of the
    split, macOS's `._x.jpg` and a hidden folder's files are not (exp3 once listed the second and missed the first);
    so do the labels of a list's entries (`img2label_paths`)."""
    from types import SimpleNamespace

    from ultralytics.data.base import BaseDataset
    from ultralytics.data.utils import img2label_paths

    train = dataset.parent / "images" / "train"
    source = sorted(train.glob("*.jpg"))[0]
    shutil.copyfile(source, train / "phone_0001.mpo")
    (train / f"._{source.name}").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (train / ".thumbnails").mkdir()
    shutil.copyfile(source, train / ".thumbnails" / source.name)
    ours = [str(path) for path in list_split_images(read_data_yaml(dataset), "train")]
    loader = SimpleNamespace(prefix="", fraction=1.0)
    assert ours == BaseDataset.get_img_files(loader, str(train))
    assert str(train / "phone_0001.mpo") in ours and len(ours) == 9
    listed = dataset.parent / "lists" / "train.txt"                   # a list: `./x` from its folder, `x` from the cwd
    listed.parent.mkdir()
    (listed.parent / "images").symlink_to(train)
    other = sorted(train.glob("train_*.jpg"))[1]
    listed.write_text(f"./images/{source.name}\n{dataset.parent.name}/images/train/{other.name}\nimages/notes.txt\n")
    spec = yaml.safe_load(dataset.read_text())
    dataset.write_text(yaml.safe_dump({**spec, "train": str(listed)}))
    monkeypatch.chdir(dataset.parent.parent)
    theirs = sorted(str(Path(path).absolute()) for path in BaseDataset.get_img_files(loader, str(listed)))
    ours = list_split_images(read_data_yaml(dataset), "train")
    assert [str(path) for path in ours] == theirs
    assert [label_path_for(path) for path in ours] == [Path(path).absolute() for path in img2label_paths(
        sorted(BaseDataset.get_img_files(loader, str(listed)), key=lambda path: str(Path(path).absolute())))]
    # from the dataset's folder, `images/train/x.jpg` has no '/images/' in its text: Ultralytics looks for its label
    # beside the image (none there: "No labels found") while the audit read labels/train/x.txt: refused
    monkeypatch.chdir(dataset.parent)
    listed.write_text(f"images/train/{other.name}\n")
    with pytest.raises(DatasetError, match="is relative to the working directory with no '/images/' in it"):
        list_split_images(read_data_yaml(dataset), "train")
    assert len(theirs) == 2 and theirs[0] != theirs[1]


def test_symlinked_splits_and_folders_are_read_where_ultralytics_reads_them(dataset: Path, tmp_path: Path) -> None:
    """Ultralytics resolves a split's path (symlinks too), looks for labels beside the resolved images and follows
    symlinked folders inside a split. exp3 read a symlinked split's labels from the link's side (audit OK, then
    S1 failed on "No labels found" and S2 chose its thresholds on a val split without boxes) and missed a symlinked
    folder's images (S1 trained on 16 images, S2 on the 8 exp3 had listed)."""
    from types import SimpleNamespace

    from ultralytics.data.base import BaseDataset
    from ultralytics.data.utils import check_det_dataset, img2label_paths

    root = dataset.parent
    store = tmp_path / "store"
    shutil.move(root / "images" / "val", store / "images" / "val")         # the images elsewhere, labels left behind
    (root / "images" / "val").symlink_to(store / "images" / "val")
    extra = tmp_path / "more"
    extra.mkdir()
    for image in sorted((root / "images" / "test").glob("*.jpg"))[:2]:     # a symlinked folder inside train
        shutil.copyfile(image, extra / f"more_{image.name}")
    (root / "images" / "train" / "more").symlink_to(extra)
    spec, theirs = read_data_yaml(dataset), check_det_dataset(str(dataset))
    loader = SimpleNamespace(prefix="", fraction=1.0)
    for split in ("train", "val"):
        ours = [str(path) for path in list_split_images(spec, split)]
        listed = BaseDataset.get_img_files(loader, theirs[split])
        assert ours == listed and [str(label_path_for(Path(path))) for path in ours] == img2label_paths(listed)
    assert sum("/more/" in path for path in listed) == 0 and len(list_split_images(spec, "train")) == 10
    report = audit_dataset(dataset)
    assert report.splits["val"]["instances"] == 0 and report.counts["no_boxes_in_split"] == 1 and report.blocking
    assert report.splits["train"]["images"] == 10


@pytest.mark.parametrize(("lines", "needle"), [
    (["./images/test/{0}", "./images/test/missing.jpg"], "line 2 ('./images/test/missing.jpg') names no file"),
    (["./images/test/{0}", "", "./images/test/{0}"], "line 3 ('./images/test/{0}') repeats line 1"),
    (["./images/test/{0} "], "line 1 ('./images/test/{0} ') has spaces or a byte-order mark around the path"),
    (["\ufeff./images/test/{0}"], "line 1 ('\\\\ufeff./images/test/{0}') has spaces or a byte-order mark"),
])
def test_a_list_naming_a_missing_or_repeated_image_is_one_line(dataset: Path, lines: list[str], needle: str) -> None:
    """A missing entry crashed the audit with a traceback (sha256 of no file); a repeated one was scored twice; one
    with a trailing space, or a byte-order mark, was counted by the audit and skipped by Ultralytics."""
    first = sorted((dataset.parent / "images" / "test").glob("*.jpg"))[0].name
    listed = dataset.parent / "test.list"                               # any file is a list to Ultralytics
    listed.write_text("\n".join(line.format(first) for line in lines) + "\n")
    dataset.write_text(yaml.safe_dump({**yaml.safe_load(dataset.read_text()), "test": "test.list"}))
    with pytest.raises(DatasetError, match=f"list '{listed}' {needle.format(first)}".replace("(", r"\(")
                       .replace(")", r"\)").replace("'", "'").replace(".", r"\.")):
        list_split_images(read_data_yaml(dataset), "test")
    report = audit_dataset(dataset)
    assert report.blocking and report.counts == {"missing_split_source": 1}
    listed.write_text(f"./images/test/{first}\n")
    assert [path.name for path in list_split_images(read_data_yaml(dataset), "test")] == [first]


def test_the_audits_warnings_reach_the_flow(dataset: Path, tmp_path: Path) -> None:
    """They were in audits/audit-*.json only: the flow logs `AuditedData.warnings` (flows/exp3.py, audit-dataset)."""
    from exp3.dataset.audit import audit_once

    _delete_label(dataset.parent)
    audited = audit_once(dataset, tmp_path)
    assert len(audited.warnings) == 1 and audited.warnings[0].startswith("warning: image_without_label: 1 (e.g. ")
    assert audit_once(dataset, tmp_path).warnings == audited.warnings  # the cached audit says the same


def test_audit_cached_under_older_rules_is_done_again(dataset: Path, tmp_path: Path) -> None:
    """A dataset that passed an earlier audit's rules (same content, same fingerprint) meets today's checks."""
    from exp3.dataset.audit import audit_once

    _stem_repeated_in_split(dataset.parent)
    fingerprint = audit_dataset(dataset).fingerprint
    (tmp_path / f"audit-{fingerprint}.json").write_text(json.dumps({"blocking": False, "summary_lines": []}))
    with pytest.raises(DatasetError, match="image_id_repeated_in_split"):
        audit_once(dataset, tmp_path)


def test_cli_exit_codes_summary_lines_and_json(dataset: Path, tmp_path: Path) -> None:
    ok = subprocess.run([sys.executable, "-m", "exp3.dataset", "audit", "--data", str(dataset)],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "audit OK" in ok.stdout
    _bad_class(dataset.parent)
    _out_of_bounds(dataset.parent)
    _out_of_bounds(dataset.parent, cx=0.96)  # another row: the same one twice is one box, as Ultralytics reads it
    report_path = tmp_path / "report.json"
    bad = subprocess.run([sys.executable, "-m", "exp3.dataset", "audit", "--data", str(dataset),
                          "--json", str(report_path)], capture_output=True, text=True)
    assert bad.returncode == 1
    error_lines = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 2  # one line per problem kind, not per problem
    assert any("box_out_of_bounds: 2" in line for line in error_lines)
    report = json.loads(report_path.read_text())
    assert report["blocking"] is True and report["counts"]["class_id_out_of_range"] == 1


def test_cli_paths_that_are_files_are_refused_in_one_line(dataset: Path, tmp_path: Path) -> None:
    """`synth --out` a file, `audit --json` under a file: one line naming the flag and the fix, exit 2 (tracebacks
    before), the file as it was."""
    notes = tmp_path / "notes.txt"
    notes.write_text("mine\n")
    for args, needle in ((["synth", "--out", str(notes)], f"--out {str(notes)!r} is a file: pass a new or empty"),
                         (["audit", "--data", str(dataset), "--json", str(notes / "report.json")],
                          f"--json {str(notes / 'report.json')!r} cannot be written (")):
        result = subprocess.run([sys.executable, "-m", "exp3.dataset", *args], capture_output=True, text=True)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
        assert result.returncode == 2 and errors == [errors[0]] and needle in errors[0], result.stderr[-1500:]
        assert "Traceback" not in result.stderr
    assert notes.read_text() == "mine\n"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (None, "does not exist"),
        ("path: [unclosed\n", "not valid YAML"),
        ("path: /definitely/not/here\ntrain: images/train\nnames: [a]\n", "dataset root"),
        ("train: images/train\n", "'names' is missing"),
    ],
)
def test_bad_data_yaml_is_one_line_error(tmp_path: Path, text: str | None, needle: str) -> None:
    path = tmp_path / "data.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(DatasetError) as caught:
        read_data_yaml(path)
    assert needle in str(caught.value) and "\n" not in str(caught.value)
    result = subprocess.run([sys.executable, "-m", "exp3.dataset", "audit", "--data", str(path)],
                            capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.startswith("error:") and needle in result.stderr


def test_nc_that_disagrees_with_names_is_refused_as_ultralytics_refuses_it(dataset: Path) -> None:
    """nc: 12 with 10 names passed the audit ("audit OK"), then every session failed inside Ultralytics after the
    occlusion suites were built. Now refused in one line (exit 2); an nc that matches, or none, passes."""
    from ultralytics.data.utils import check_det_dataset

    spec = yaml.safe_load(dataset.read_text())
    assert len(spec["names"]) == 10 and "nc" not in spec
    dataset.write_text(yaml.safe_dump({**spec, "nc": 12}))
    with pytest.raises(SyntaxError, match="'names' length 10 and 'nc: 12' must match"):
        check_det_dataset(str(dataset))
    bad = subprocess.run([sys.executable, "-m", "exp3.dataset", "audit", "--data", str(dataset)],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stdout == "" and bad.stderr.count("\n") == 1, bad.stdout + bad.stderr
    assert bad.stderr.strip() == (f"error: {str(dataset)!r}: 'nc: 12' but 'names' lists 10 classes: set nc: 10 "
                                  "or remove 'nc:'")
    dataset.write_text(yaml.safe_dump({**spec, "nc": 10}))
    assert not audit_dataset(dataset).blocking and len(read_data_yaml(dataset).names) == 10


def test_a_data_yaml_of_other_channels_is_refused(dataset: Path) -> None:
    """`channels: 1` passed the audit; S1 trained a 1-channel model from the user's yaml, S2 a 3-channel one from
    exp3's (which drops the key), and both failed at evaluation after their whole training. Now refused first."""
    spec = yaml.safe_load(dataset.read_text())
    dataset.write_text(yaml.safe_dump({**spec, "channels": 1}))
    with pytest.raises(DatasetError, match=r"'channels: 1': exp3 trains, occludes and evaluates 3-channel images: "
                                           r"remove 'channels:' \(or set it to 3\)$"):
        read_data_yaml(dataset)
    dataset.write_text(yaml.safe_dump({**spec, "channels": 3}))
    assert len(read_data_yaml(dataset).names) == 10


def test_a_relative_path_that_ultralytics_reads_elsewhere_is_refused(dataset: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """`path: foods` in cfg/foods.yaml: exp3 reads cfg/foods, Ultralytics (`check_det_dataset`, which trains S1 from
    this yaml) the working directory's foods, here an older copy. Refused in one line; from the yaml's folder, both
    read the same."""
    from ultralytics.data.utils import check_det_dataset

    spec = yaml.safe_load(dataset.read_text())
    (tmp_path / "cfg").mkdir()
    shutil.copytree(dataset.parent, tmp_path / "cfg" / "foods")
    shutil.copytree(dataset.parent, tmp_path / "work" / "foods")
    relative = tmp_path / "cfg" / "foods.yaml"
    relative.write_text(yaml.safe_dump({**spec, "path": "foods"}))
    monkeypatch.chdir(tmp_path / "work")
    assert Path(check_det_dataset(str(relative))["train"]).is_relative_to(tmp_path / "work" / "foods")  # its reading
    with pytest.raises(DatasetError, match=r"'path: foods' is relative: exp3 reads it from the yaml's folder .*cfg/"
                                           r"foods\), Ultralytics from the working directory .*work/foods\)"):
        read_data_yaml(relative)
    monkeypatch.chdir(tmp_path / "cfg")
    assert read_data_yaml(relative).root == tmp_path / "cfg" / "foods"


def test_list_file_splits_and_label_paths(dataset: Path) -> None:
    root = dataset.parent
    images = sorted((root / "images" / "val").glob("*.jpg"))
    (root / "val.txt").write_text("\n".join(f"./images/val/{p.name}" for p in images) + "\n")
    spec = yaml.safe_load(dataset.read_text())
    spec["val"] = "val.txt"
    dataset.write_text(yaml.safe_dump(spec))
    listed = list_split_images(read_data_yaml(dataset), "val")
    assert [p.name for p in listed] == [p.name for p in images]
    assert label_path_for(Path("/d/images/x/images/a.jpg")) == Path("/d/images/x/labels/a.txt")


# ---------------------------------------------------------------------------------------------
# Polygon (segment) labels: read the way Ultralytics reads them (exp3.dataset.labels)


def _polygon_label(root: Path, text: str) -> Path:
    label = _first_label(root)
    label.write_text(text)
    return label


def test_polygon_label_passes_the_audit(dataset: Path) -> None:
    """A valid segment row (was flagged box_out_of_bounds: its first four values were read as cx cy w h)."""
    _polygon_label(dataset.parent, "1 0.1 0.2 0.4 0.2 0.4 0.6 0.1 0.6\n0 0.5 0.5 0.9 0.55 0.7 0.9\n")
    report = audit_dataset(dataset)
    assert report.problems == [] and not report.blocking


@pytest.mark.parametrize(("text", "kind"), [
    ("1 0.1 0.2 0.4 0.2 0.4 0.6 0.1\n", "malformed_label_line"),          # odd number of coordinates
    ("1 0.1 0.2 0.4 0.2 0.4 0.6\n0 0.5 0.5 0.2 0.2\n", "malformed_label_line"),  # box row in a segment file
    ("1 0.5 0.5 0.2 0.2 0.3\n", "malformed_label_line"),                  # 6 values: Ultralytics drops it
    ("1 0.1 0.2 1.4 0.2 0.4 0.6\n", "box_out_of_bounds"),                 # a point outside the image
    ("1 0.1 0.2 0.4 0.2 0.7 0.2\n", "box_out_of_bounds"),                 # zero height
    ("42 0.1 0.2 0.4 0.2 0.4 0.6\n", "class_id_out_of_range"),
])
def test_bad_polygon_rows_stay_blocked(dataset: Path, text: str, kind: str) -> None:
    _polygon_label(dataset.parent, text)
    report = audit_dataset(dataset)
    assert report.blocking and report.counts.get(kind, 0) == 1, report.counts


def test_label_parser_boxes_and_byte_order_mark() -> None:
    from exp3.dataset.labels import parse_label_text

    rows, malformed = parse_label_text("\ufeff0 0.1 0.2 0.5 0.2 0.5 0.8 0.1 0.8\n\n1 0.3 0.4 0.5 x 0.1 0.1 0.2\n")
    assert malformed == [(3, "non-numeric '1 0.3 0.4 0.5 x 0.1 0.1 0.2'")]
    assert [row.class_id for row in rows] == [0] and rows[0].is_polygon
    assert rows[0].box == pytest.approx((0.3, 0.5, 0.4, 0.6))
    rows, malformed = parse_label_text("2 0.5 0.5 0.2 0.4\n3 0.5\n")
    assert rows[0].box == (0.5, 0.5, 0.2, 0.4) and not rows[0].is_polygon and malformed == [(2, "2 values")]


def test_duplicate_label_rows_are_dropped_as_ultralytics_drops_them(dataset: Path) -> None:
    """Ultralytics scores one box of a row written twice (or twice up to float32); exp3 kept both: the audit counted
    two instances, and the occluder drew two rectangles over the one box (covered 0.52 for targets 0.46 and 0.34)."""
    from ultralytics.data.utils import verify_image_label

    from exp3.dataset.labels import parse_label_text

    image = sorted((dataset.parent / "images" / "train").glob("*.jpg"))[0]
    label = label_path_for(image)
    label.write_text("1 0.5 0.5 0.2 0.2\n1 0.5 0.5 0.2 0.2\n1 0.50000001 0.5 0.2 0.2\n2 0.5 0.5 0.2 0.2\n")
    rows, malformed = parse_label_text(label.read_text())
    theirs = verify_image_label((str(image), str(label), "", False, 10, 0, 0, False))[1]
    assert [(row.line, row.class_id) for row in rows] == [(1, 1), (4, 2)] and malformed == []
    np.testing.assert_allclose(sorted((row.class_id, *row.box) for row in rows), theirs, atol=1e-7)

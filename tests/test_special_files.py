"""Special files as photos and inputs (issue 19, class 2): a FIFO with no writer, /dev/zero and /dev/null behind links,
a UNIX socket, a symbolic link loop, a 10 GB sparse file and a folder, each named as a photo, are refused in one line
(`skipped PATH: ...`) by every reader (`audit run`, `data index`, `predict`, the server's file:// and uploads) within
seconds, never opened blocking or read past the byte limit; the good photos beside them are still scored.
"""

from __future__ import annotations

import csv
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from bintally.data.images import MAX_IMAGE_BYTES_ENV
from bintally.errors import DataError
from bintally.io import NoSuchFile, TooLarge, read_regular, regular_problem
from tests.cli_helpers import bintally
from tests.servers import API_KEY, AUTH, QUIET_ENV

GOOD = ("00100", "00101", "00102")
FIFO, DEVICE, SOCKET = "is a FIFO, not a regular file", "is a character device, not a regular file", "is a socket, not a regular file"
LOOP, TOO_LARGE, FOLDER = "a symbolic link loop", "larger than the limit of 50,000,000 bytes", "is a folder"
PROBLEMS = {"fifo.jpg": FIFO, "zero.jpg": DEVICE, "null.jpg": DEVICE, "socket.jpg": SOCKET, "loop.jpg": LOOP,
            "sparse.jpg": TOO_LARGE, "folder.jpg": FOLDER}
QUICK = 60  # seconds: a command that opened a FIFO blocking, or read /dev/zero, would never finish


def make_specials(folder: Path) -> dict[str, Path]:
    """Each kind of special file, named as a photo in `folder`: name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    os.mkfifo(folder / "fifo.jpg")  # no writer, ever
    os.symlink("/dev/zero", folder / "zero.jpg")
    os.symlink("/dev/null", folder / "null.jpg")
    here = os.getcwd()
    os.chdir(folder)  # a relative name: a UNIX socket's path is limited to about 100 bytes
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.bind("socket.jpg")
    finally:
        os.chdir(here)
    os.symlink("loop.jpg", folder / "loop.jpg")
    with open(folder / "sparse.jpg", "wb") as f:
        f.truncate(10 * 2**30)  # 10 GB that use no disk
    (folder / "folder.jpg").mkdir()
    return {name: folder / name for name in PROBLEMS}


def copy_good(mirror: Path, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(mirror / "bin-images" / f"{i}.jpg", folder / f"{i}.jpg")) for i in GOOD]


@pytest.fixture
def photos(mirror, tmp_path) -> tuple[list[Path], dict[str, Path]]:
    """(good photos, special files) side by side in one folder."""
    folder = tmp_path / "photos"
    return copy_good(mirror, folder), make_specials(folder)


def timed(*args, env: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    result = bintally(*args, env=QUIET_ENV | (env or {}), timeout=QUICK * 2)
    return result, time.monotonic() - start


def skipped_lines(stderr: str) -> dict[str, str]:
    """`skipped PATH: problem` lines of stderr: file name -> problem."""
    lines = [line.removeprefix("skipped ") for line in stderr.splitlines() if line.startswith("skipped ")]
    return {Path(line.split(": ", 1)[0]).name: line.split(": ", 1)[1] for line in lines}


# ---------------------------------------------------------------- the one reader


def test_read_regular_refuses_each_special_file_at_once_and_reads_a_photo(photos):
    good, specials = photos
    start = time.monotonic()
    for name, path in specials.items():
        with pytest.raises(DataError) as refused:
            read_regular(path, 50_000_000, "image")
        assert refused.value.path == str(path) and PROBLEMS[name] in refused.value.problem, (name, refused.value)
        assert "\n" not in str(refused.value)
    assert time.monotonic() - start < 5
    assert read_regular(good[0], 50_000_000) == good[0].read_bytes()
    with pytest.raises(TooLarge, match="larger than the limit of 1,000 bytes"):
        read_regular(good[0], 1000)
    with pytest.raises(NoSuchFile, match="no such image"):
        read_regular(good[0].with_name("gone.jpg"), 1000, "image")
    with pytest.raises(DataError, match="NUL byte"):
        read_regular(f"{good[0]}\x00x", 1000)


def test_a_file_whose_size_says_less_than_it_gives_is_not_read_past_the_limit():
    assert os.stat("/proc/self/maps").st_size == 0  # a /proc file: its size says 0, it gives kilobytes
    with pytest.raises(TooLarge, match="grew past the limit of 100 bytes while it was read"):
        read_regular("/proc/self/maps", 100)
    assert len(read_regular("/proc/self/maps", 10_000_000)) > 100


def test_a_link_is_not_followed_where_it_must_not_be(photos):
    good, specials = photos
    os.symlink(good[0], good[0].with_name("link.jpg"))
    assert read_regular(good[0].with_name("link.jpg"), 10**8) == good[0].read_bytes()
    with pytest.raises(DataError, match="is a symbolic link"):
        read_regular(good[0].with_name("link.jpg"), 10**8, follow_symlinks=False)
    assert regular_problem(specials["fifo.jpg"]) == FIFO and regular_problem(good[0]) == ""


# ---------------------------------------------------------------- audit run


def write_totals_csv(path: Path, images: list[Path]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["bin_id", "image", "record_qty"])
        writer.writerows([(f"bin-{image.stem}", str(image), 2) for image in images])
    return path


def test_audit_run_skips_each_special_photo_in_one_line_and_scores_the_good_ones(photos, tiny_artifact, tmp_path):
    good, specials = photos
    source = write_totals_csv(tmp_path / "bins.csv", [good[0], *specials.values(), *good[1:]])
    result, took = timed("audit", "run", "--model", tiny_artifact.path, "--data", source, "--db", tmp_path / "a.db",
                         "--backend", "torch", "--no-progress")
    assert result.returncode == 0 and took < QUICK, (result.returncode, took, result.stderr)
    assert f"scored {len(good)} of {len(good) + len(specials)} bin(s), {len(specials)} unreadable photo(s) skipped" in result.stdout
    skipped = skipped_lines(result.stderr)
    assert set(skipped) == set(PROBLEMS) - {"zero.jpg", "null.jpg"} | {"zero", "null"}, result.stderr  # the links resolved
    for name, problem in PROBLEMS.items():
        assert problem in skipped[name if name not in ("zero.jpg", "null.jpg") else name[:-4]], (name, skipped)
    assert "Traceback" not in result.stderr


def test_audit_photo_byte_limit_comes_from_the_environment_and_is_kept_while_reading(photos, tiny_artifact, tmp_path):
    good, specials = photos
    source = write_totals_csv(tmp_path / "bins.csv", [specials["zero.jpg"], good[0], good[1]])
    result, took = timed("audit", "run", "--model", tiny_artifact.path, "--data", source, "--db", tmp_path / "a.db",
                         "--backend", "torch", "--no-progress", env={MAX_IMAGE_BYTES_ENV: "1000"})
    assert result.returncode == 1 and took < QUICK, (took, result.stderr)  # done, but nothing could be read
    assert "scored 0 of 3 bin(s), 3 unreadable photo(s) skipped" in result.stdout
    assert result.stderr.splitlines()[-1] == "no photo of the source could be read (3 skipped): nothing was scored"
    skipped = skipped_lines(result.stderr)
    assert skipped["zero"] == DEVICE
    for photo in good[:2]:
        assert skipped[photo.name] == f"larger than the limit of 1,000 bytes ({photo.stat().st_size:,} bytes) (raise it with {MAX_IMAGE_BYTES_ENV})"


@pytest.mark.parametrize("kind", ["fifo", "zero", "socket", "loop", "sparse"])
def test_a_special_file_as_the_audit_source_is_one_line_and_exit_2(tmp_path, tiny_artifact, kind):
    source = make_specials(tmp_path / "specials")[f"{kind}.jpg"].rename(tmp_path / f"{kind}.csv")
    if kind == "sparse":
        os.truncate(source, 2 * 10**9)  # over the 1 GB a CSV source may have
    if kind == "loop":
        source.unlink()
        os.symlink(source.name, source)
    result, took = timed("audit", "run", "--model", tiny_artifact.path, "--data", source, "--db", tmp_path / "a.db",
                         "--backend", "torch", "--no-progress")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and took < QUICK and len(lines) == 1, (result.returncode, took, result.stderr)
    assert str(source) in lines[0] and {"fifo": FIFO, "zero": DEVICE, "socket": SOCKET, "loop": LOOP,
                                        "sparse": "larger than the limit of 1,000,000,000 bytes"}[kind] in lines[0], lines
    assert not (tmp_path / "a.db").exists()


def test_a_bucket_with_special_photos_and_a_fifo_record(mirror, tmp_path, tiny_artifact):
    bucket = tmp_path / "bucket"
    good = copy_good(mirror, bucket / "bin-images")
    (bucket / "metadata").mkdir()
    for photo in good:
        shutil.copy(mirror / "metadata" / f"{photo.stem}.json", bucket / "metadata")
    specials = make_specials(bucket / "bin-images")
    del specials["loop.jpg"]  # its record would be loop.json
    specials["loop.jpg"] = bucket / "bin-images" / "loop.jpg"
    for path in specials.values():
        shutil.copy(mirror / "metadata" / "00100.json", bucket / "metadata" / f"{path.stem}.json")
    result, took = timed("audit", "run", "--model", tiny_artifact.path, "--data", bucket, "--db", tmp_path / "a.db",
                         "--backend", "torch", "--no-progress")
    assert result.returncode == 0 and took < QUICK, (took, result.stderr)
    assert f"scored {len(good)} of {len(good) + len(specials)} bin(s)" in result.stdout
    assert len(skipped_lines(result.stderr)) == len(specials), result.stderr
    (bucket / "metadata" / "00100.json").unlink()
    os.mkfifo(bucket / "metadata" / "00100.json")
    result, took = timed("audit", "run", "--model", tiny_artifact.path, "--data", bucket, "--db", tmp_path / "b.db",
                         "--backend", "torch", "--no-progress")
    assert result.returncode == 2 and took < QUICK, (took, result.stderr)
    assert result.stderr.strip() == f"error: {bucket / 'metadata' / '00100.json'}: {FIFO}" or (
        f"{bucket / 'metadata' / '00100.json'}: {FIFO}" in result.stderr and len(result.stderr.strip().splitlines()) == 1), result.stderr


# ---------------------------------------------------------------- data index


def test_data_index_lists_special_files_in_class_folders_and_a_csv_without_opening_them(mirror, tmp_path):
    from bintally.data.manifest import read_manifest

    classes = tmp_path / "classes"
    good = copy_good(mirror, classes / "2")
    specials = make_specials(classes / "2")
    result, took = timed("data", "index", classes, "--out", tmp_path / "m.parquet", "--no-progress")
    assert result.returncode == 0 and took < QUICK, (took, result.stderr)
    assert f"{len(good)} usable photos, {len(specials) - 1} unusable" in result.stdout  # folder.jpg is a folder, not a photo
    skipped = skipped_lines(result.stderr)
    assert skipped == {"fifo.jpg": f"unreadable: {FIFO}", "zero.jpg": f"unreadable: {DEVICE}", "null.jpg": f"unreadable: {DEVICE}",
                       "socket.jpg": f"unreadable: {SOCKET}", "loop.jpg": "missing: broken or looping link",
                       "sparse.jpg": f"unreadable: {TOO_LARGE} (10,737,418,240 bytes) (raise it with {MAX_IMAGE_BYTES_ENV})"}
    df = read_manifest(tmp_path / "m.parquet").set_index("id")
    assert (df.loc[list(GOOD), "status"] == "ok").all() and df.loc["sparse", "bytes"] == 0

    listing = tmp_path / "labels.csv"
    listing.write_text("path,count\n" + "".join(f"{p},2\n" for p in [*good, *specials.values()]))
    result, took = timed("data", "index", listing, "--out", tmp_path / "c.parquet", "--no-progress")
    assert result.returncode == 0 and took < QUICK, (took, result.stderr)
    assert f"{len(good)} usable photos, {len(specials)} unusable" in result.stdout
    assert skipped_lines(result.stderr)["folder.jpg"] == "unreadable: is a folder, not a regular file"


@pytest.mark.parametrize("kind", ["fifo", "zero", "socket"])
def test_a_special_file_as_the_index_csv_or_a_metadata_file(mirror, tmp_path, kind):
    special = make_specials(tmp_path / "specials")[f"{kind}.jpg"]
    listing = special.rename(tmp_path / "labels.csv")
    result, took = timed("data", "index", listing, "--out", tmp_path / "m.parquet")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and took < QUICK and len(lines) == 1 and str(listing) in lines[0], (took, result.stderr)
    assert {"fifo": FIFO, "zero": DEVICE, "socket": SOCKET}[kind] in lines[0]

    bucket = tmp_path / "bucket"
    copy_good(mirror, bucket / "bin-images")
    (bucket / "metadata").mkdir()
    shutil.copy(mirror / "metadata" / "00101.json", bucket / "metadata")
    shutil.copy(mirror / "metadata" / "00102.json", bucket / "metadata")
    listing.rename(bucket / "metadata" / "00100.json")
    result, took = timed("data", "index", bucket, "--out", tmp_path / "b.parquet", "--no-progress")
    assert result.returncode == 0 and took < QUICK, (took, result.stderr)
    assert "2 usable photos, 1 unusable" in result.stdout
    assert skipped_lines(result.stderr)["00100.jpg"].startswith("bad-metadata: is a "), result.stderr


# ---------------------------------------------------------------- predict


def test_predict_skips_special_files_given_or_in_a_folder_and_counts_the_rest(photos, tiny_artifact):
    good, specials = photos
    result, took = timed("predict", "--model", tiny_artifact.path, "--no-progress", good[0], *specials.values(), good[1])
    assert result.returncode == 1 and took < QUICK, (took, result.stderr)
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == [str(good[0]), str(good[1])]
    skipped = skipped_lines(result.stderr)
    assert set(skipped) == set(PROBLEMS) and all(PROBLEMS[name] in skipped[name] for name in PROBLEMS), skipped
    assert result.stderr.strip().splitlines()[-1] == f"2 photo(s) counted, {len(specials)} could not be read"

    folder = good[0].parent
    (folder / "deeper").mkdir()
    os.mkfifo(folder / "deeper" / "fifo2.png")
    os.symlink(folder, folder / "deeper" / "linked-folder")  # a linked folder is not entered (no photo twice, no cycle)
    result, took = timed("predict", "--model", tiny_artifact.path, "--no-progress", folder)
    assert result.returncode == 1 and took < QUICK, (took, result.stderr)
    assert sorted(Path(line.split("\t")[0]).name for line in result.stdout.splitlines()) == [f"{i}.jpg" for i in GOOD]
    skipped = skipped_lines(result.stderr)
    assert set(skipped) == set(PROBLEMS) - {"folder.jpg"} | {"fifo2.png"}, skipped  # folder.jpg is walked into: empty
    assert skipped["fifo2.png"] == FIFO


# ---------------------------------------------------------------- the server: file:// sources and uploads


@pytest.fixture
def server(serve, tiny_artifact, photos, tmp_path):
    from bintally.serving.config import ServeConfig

    good, _ = photos
    os.symlink("fifo.jpg", good[0].with_name("link-to-fifo.jpg"))
    config = ServeConfig(model=str(tiny_artifact.path), backend="torch", threads=1, api_key=API_KEY, file_root=str(good[0].parent),
                         audit_db=str(tmp_path / "audit.db"), audit_auth="open", max_body_bytes=2_000_000).validate()
    return serve(config)


def test_file_uris_of_special_files_are_4xx_at_once(server, photos):
    good, specials = photos
    expected = {"fifo.jpg": (400, FIFO), "link-to-fifo.jpg": (400, FIFO), "socket.jpg": (400, SOCKET),
                "sparse.jpg": (413, "larger than the limit"), "folder.jpg": (400, FOLDER),
                "zero.jpg": (403, "outside the allowed file root"), "null.jpg": (403, "outside the allowed file root"),
                "loop.jpg": (403, "cannot be resolved")}
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=QUICK) as client:
        for name, (status, words) in expected.items():
            start = time.monotonic()
            answer = client.post("/v1/count", json={"uri": (good[0].parent / name).as_uri()})
            assert answer.status_code == status and words in answer.json()["error"], (name, answer.text)
            assert time.monotonic() - start < 10, name
        assert client.post("/v1/count", json={"uri": good[0].as_uri()}).status_code == 200


def test_audit_run_over_http_skips_special_file_uris_and_refuses_an_upload_over_the_limit(server, photos, monkeypatch):
    good, specials = photos
    rows = [("bin-good", good[0].as_uri(), 2), ("bin-upload", "upload.jpg", 2)]
    rows += [(f"bin-{name[:-4]}", path.as_uri(), 1) for name, path in specials.items() if name in ("fifo.jpg", "socket.jpg", "sparse.jpg")]
    text = "bin_id,image,record_qty\n" + "".join(f"{b},{i},{q}\n" for b, i, q in rows)
    files = [("csv", ("bins.csv", text.encode(), "text/csv")), ("photos", ("upload.jpg", good[1].read_bytes(), "image/jpeg"))]
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=QUICK) as client:
        created = client.post("/v1/audit-runs", files=files, data={"name": "specials"})
        assert created.status_code == 201, created.text
        assert created.json()["scored"] == 2
        problems = {row["image"].rsplit("/", 1)[-1]: row["problem"] for row in created.json()["unreadable"]}
        assert problems == {"fifo.jpg": FIFO, "socket.jpg": SOCKET, "sparse.jpg": "larger than the limit of 2,000,000 bytes"}

        monkeypatch.setenv(MAX_IMAGE_BYTES_ENV, "1000")  # the server reads the photo limit at each request
        text = f"bin_id,image,record_qty\nbin-good,{good[0].as_uri()},3\nbin-upload,upload.jpg,3\n"
        files[0] = ("csv", ("bins.csv", text.encode(), "text/csv"))
        again = client.post("/v1/audit-runs", files=files, data={"name": "small-limit"})
        assert again.status_code == 201, again.text
        problems = {row["image"].rsplit("/", 1)[-1]: row["problem"] for row in again.json()["unreadable"]}
        assert again.json()["scored"] == 0 and problems[good[0].name] == "larger than the limit of 1,000 bytes"
        assert problems["upload.jpg"] == f"larger than the limit of 1,000 bytes ({good[1].stat().st_size:,} bytes)"
        monkeypatch.delenv(MAX_IMAGE_BYTES_ENV)

        big = [("csv", ("bins.csv", b"bin_id,image,record_qty\nbin-big,big.jpg,1\n", "text/csv")),
               ("photos", ("big.jpg", os.urandom(2_100_000), "image/jpeg"))]
        too_large = client.post("/v1/audit-runs", files=big, data={"name": "big"})
        assert too_large.status_code == 413 and "larger than the limit" in too_large.json()["error"], too_large.text
        assert client.get("/ping").status_code == 200


@pytest.mark.parametrize("kind", ["fifo", "zero"])
def test_a_special_file_as_a_list_of_ids_or_of_counts_is_one_line(tmp_path, tiny_manifest, kind):
    special = make_specials(tmp_path / "specials")[f"{kind}.jpg"]
    problem = {"fifo": FIFO, "zero": DEVICE}[kind]
    result, took = timed("data", "fetch", "--ids-file", special, "--out", tmp_path / "out", "--no-progress")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and took < QUICK and len(lines) == 1 and f"{special}: {problem}" in lines[0], result.stderr
    listing = special.rename(tmp_path / "file_list.json")
    manifest = Path(shutil.copy(tiny_manifest, tmp_path / "m.parquet"))
    result, took = timed("data", "split", manifest, "--file-list", listing, "--out", tmp_path / "split.parquet")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and took < QUICK and len(lines) == 1 and f"{listing}: {problem}" in lines[0], result.stderr


def test_a_photo_replaced_by_a_fifo_or_a_device_link_after_indexing_is_stale_not_a_hang(mirror, tmp_path):
    bucket = tmp_path / "bucket"
    good = copy_good(mirror, bucket / "bin-images")
    (bucket / "metadata").mkdir()
    for photo in good:
        shutil.copy(mirror / "metadata" / f"{photo.stem}.json", bucket / "metadata")
    manifest = tmp_path / "m.parquet"
    assert timed("data", "index", bucket, "--out", manifest, "--no-progress")[0].returncode == 0
    good[0].unlink()
    os.mkfifo(good[0])
    good[1].unlink()
    os.symlink("/dev/zero", good[1])
    result, took = timed("data", "check", manifest, "--verify-hashes")
    assert result.returncode == 1 and took < QUICK, (took, result.stdout, result.stderr)
    assert f"{good[0].name}: changed since indexing (now a FIFO, not a regular file)" in result.stdout
    assert f"{good[1].name}: changed since indexing (now a character device, not a regular file)" in result.stdout

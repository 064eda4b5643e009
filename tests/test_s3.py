"""The segment job against a real S3 server (SeaweedFS, credentials enforced): s3 -> s3 and its failures."""

import json
import os

import pytest
from delta_read import delta_sql, delta_table, s3_options
from s3_server import ADMIN, PUBLIC_BUCKET, READER
from test_segment_job import ROOT, run_job

pytestmark = pytest.mark.ray


def upload_inputs(fs, bucket: str, mixed_folder: dict[str, str], tiny_artifact: str) -> None:
    for name, path in mixed_folder.items():
        fs.put_file(path, f"{bucket}/photos/{name}")
    fs.put(tiny_artifact + "/", f"{bucket}/models/tiny/", recursive=True)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_segment_s3_to_s3_with_endpoint_flag_and_list_file(s3_server, s3_bucket, tiny_artifact, mixed_folder):
    fs = s3_server.filesystem()
    upload_inputs(fs, s3_bucket, mixed_folder, tiny_artifact)
    fs.put_file(mixed_folder["grey.png"], f"{s3_bucket}/elsewhere/listed.png")
    fs.pipe_file(f"{s3_bucket}/lists/extra.txt", f"s3://{s3_bucket}/elsewhere/listed.png\n".encode())
    env = s3_server.env()
    env.pop("AWS_ENDPOINT_URL")  # the flag must carry the endpoint to the driver and every worker
    done = run_job(
        "segment.py",
        "--input",
        f"s3://{s3_bucket}/photos/",
        f"s3://{s3_bucket}/lists/extra.txt",
        "--output",
        f"s3://{s3_bucket}/seg",
        "--model",
        f"s3://{s3_bucket}/models/tiny",
        "--s3-endpoint-url",
        s3_server.endpoint,
        "--batch-size",
        "4",
        "--run-id",
        "s3run",
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "run s3run: 8 images, 0 skipped, 8 processed: 7 ok, 1 errors" in done.stdout

    output, options = f"s3://{s3_bucket}/seg", s3_options(s3_server.env())
    images = delta_sql(output, "SELECT * FROM images", options).to_pylist()
    by_uri = {row["image_uri"]: row for row in images}
    expected = {f"s3://{s3_bucket}/photos/{name}" for name in mixed_folder} | {f"s3://{s3_bucket}/elsewhere/listed.png"}
    assert set(by_uri) == expected
    assert by_uri[f"s3://{s3_bucket}/photos/corrupt.png"]["status"] == "error"
    listed = by_uri[f"s3://{s3_bucket}/photos/grey.png"]
    assert listed["source_version"] == fs.info(f"{s3_bucket}/photos/grey.png")["ETag"].strip('"')
    assert by_uri[f"s3://{s3_bucket}/elsewhere/listed.png"]["mask_png"] == listed["mask_png"]

    run = delta_sql(output, "SELECT run_id, inputs, skipped, processed, ok, errors FROM runs", options).to_pylist()
    assert run == [{"run_id": "s3run", "inputs": 8, "skipped": 0, "processed": 8, "ok": 7, "errors": 1}]
    stored = sorted(p.rsplit("/", 1)[-1] for p in fs.find(f"{s3_bucket}/seg/images") if p.endswith(".parquet"))
    committed = delta_table(output, "images", options).file_uris()
    assert sorted(p.rsplit("/", 1)[-1] for p in committed) == stored
    assert not [p for p in fs.find(f"{s3_bucket}/seg") if ".write-check-" in p]


def test_anonymous_read_of_a_public_bucket(s3_server, tmp_path, tiny_artifact, mixed_folder):
    fs = s3_server.filesystem()
    fs.put_file(mixed_folder["rgba.png"], f"{PUBLIC_BUCKET}/anon-test/rgba.png")
    env = s3_server.env()
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        env.pop(key)
    output = str(tmp_path / "out")
    args = (
        "--input",
        f"s3://{PUBLIC_BUCKET}/anon-test/",
        "--output",
        output,
        "--model",
        tiny_artifact,
        "--run-id",
        "anon",
    )
    done = run_job("segment.py", *args, "--anonymous", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "1 images, 0 skipped, 1 processed: 1 ok, 0 errors" in done.stdout


@pytest.mark.parametrize(
    "case", ["wrong-secret", "missing-input-bucket", "missing-output-bucket", "read-only-output", "missing-prefix"]
)
def test_storage_errors_are_one_line_naming_the_uri(case, s3_server, s3_bucket, tiny_artifact, mixed_folder):
    fs = s3_server.filesystem()
    upload_inputs(fs, s3_bucket, mixed_folder, tiny_artifact)
    photos, output, model = f"s3://{s3_bucket}/photos/", f"s3://{s3_bucket}/seg", f"s3://{s3_bucket}/models/tiny"
    env = s3_server.env()
    if case == "wrong-secret":
        env = s3_server.env(ADMIN[0], "not-the-secret")
        expected = f"{model}: access denied"
    elif case == "missing-input-bucket":
        photos = "s3://no-such-bucket-here/photos/"
        expected = f"{photos}: bucket 'no-such-bucket-here' does not exist"
    elif case == "missing-output-bucket":
        output = "s3://no-such-output-bucket/seg"
        expected = f"{output}: bucket 'no-such-output-bucket' does not exist"
    elif case == "read-only-output":
        env = s3_server.env(*READER)
        expected = f"{output}: access denied"
    else:
        photos = f"s3://{s3_bucket}/no/such/prefix/"
        expected = f"{photos}: no such object or prefix"
    done = run_job("segment.py", "--input", photos, "--output", output, "--model", model, env=env, timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]
    lines = error_lines(done.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"error: {expected}"), done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert not fs.exists(f"{s3_bucket}/seg/runs")


RECOGNISABLE = "recognisable-secret-0123456789"


@pytest.mark.parametrize("case", ["flag-conflict", "wrong-secret", "not-json", "not-an-object"])
def test_credentials_in_fsspec_s3_never_appear_in_errors(case, s3_server, s3_bucket, tmp_path):
    """FSSPEC_S3 may carry s3fs' key, secret and token: whatever is wrong with it or with them, the job
    ends with one clear line that shows none of them."""
    settings = {
        "key": ADMIN[0],
        "secret": RECOGNISABLE,
        "endpoint_url": s3_server.endpoint,
        "client_kwargs": {"aws_session_token": f"token-{RECOGNISABLE}"},
    }
    flags, encoded = [], json.dumps(settings)
    model = f"s3://{s3_bucket}/models/tiny"
    if case == "flag-conflict":
        flags, expected = ["--s3-endpoint-url", "http://127.0.0.1:9"], "FSSPEC_S3 already holds the S3 settings"
    elif case == "wrong-secret":
        expected = f"{model}: access denied"
    elif case == "not-json":
        encoded, expected = encoded[:-1], "FSSPEC_S3 is not valid JSON"
    else:
        encoded, expected = json.dumps([RECOGNISABLE]), "FSSPEC_S3 must be a JSON object"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "RAY_ADDRESS"}
    done = run_job(
        "segment.py",
        "--input",
        f"s3://{s3_bucket}/photos/",
        "--output",
        str(tmp_path / "out"),
        "--model",
        model,
        *flags,
        env={**env, "FSSPEC_S3": encoded},
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert RECOGNISABLE not in done.stdout + done.stderr
    lines = error_lines(done.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"error: {expected}"), done.stderr[-2000:]
    assert "Traceback" not in done.stderr


def test_pyarrow_filesystem_uses_the_same_settings(s3_server, s3_bucket, monkeypatch):
    """Ray Train checkpoints and pyarrow writers go through pyarrow's S3 client: same endpoint, same errors."""
    import fsspec
    import pyarrow as pa
    import pyarrow.parquet as pq

    from jobs.common.errors import UserError
    from jobs.storage.files import storage_errors
    from jobs.storage.settings import StorageOptions, arrow_filesystem, configure_storage

    for key, value in s3_server.env().items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("FSSPEC_S3", "")  # restored (removed) after the test, as is fsspec's config below
    monkeypatch.setitem(fsspec.config.conf, "s3", {})
    configure_storage(StorageOptions(endpoint_url=s3_server.endpoint))

    uri = f"s3://{s3_bucket}/arrow/table.parquet"
    fs, path = arrow_filesystem(uri)
    pq.write_table(pa.table({"x": [1, 2, 3]}), path, filesystem=fs)
    assert s3_server.filesystem().exists(f"{s3_bucket}/arrow/table.parquet")
    assert pq.read_table(path, filesystem=fs).column("x").to_pylist() == [1, 2, 3]

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    fs, path = arrow_filesystem(uri)
    with pytest.raises(UserError, match=f"^{uri}: "):
        with storage_errors(uri):
            pq.read_table(path, filesystem=fs)


def write_scene_pairs(fs, prefix: str, count: int, seed: int) -> None:
    """Synthetic scenes and their masks as PNG objects paired by stem."""
    import io

    import numpy as np
    from PIL import Image

    from unet_core.synthetic import make_scene

    rng = np.random.default_rng(seed)
    for index in range(count):
        for kind, array in zip(("images", "masks"), make_scene(rng, 32, 32, shapes=2)):
            buffer = io.BytesIO()
            Image.fromarray(array).save(buffer, format="PNG")
            fs.pipe_file(f"{prefix}/{kind}/scene{index:03d}.png", buffer.getvalue())


@pytest.mark.skipif(
    not (ROOT / "jobs" / "train.py").exists() or not (ROOT / "jobs" / "evaluate.py").exists(),
    reason="jobs/train.py and jobs/evaluate.py are not in this tree",
)
def test_train_from_s3_checkpoints_to_s3_resumes_then_evaluates_from_s3(s3_server, s3_bucket):
    fs = s3_server.filesystem()
    write_scene_pairs(fs, f"{s3_bucket}/train", 32, seed=1)
    write_scene_pairs(fs, f"{s3_bucket}/val", 8, seed=2)
    root = f"s3://{s3_bucket}"
    train = [
        "--images",
        f"{root}/train/images",
        "--masks",
        f"{root}/train/masks",
        "--val-images",
        f"{root}/val/images",
        "--val-masks",
        f"{root}/val/masks",
        "--num-classes",
        "4",
        "--input-size",
        "32",
        "--base-filters",
        "4",
        "--batch-size",
        "8",
        "--workers",
        "1",
        "--name",
        "s3train",
        "--storage",
        f"{root}/checkpoints",
        "--output",
        f"{root}/model",
    ]
    first = run_job("train.py", *train, "--epochs", "1", env=s3_server.env(), timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    flag_only = {k: v for k, v in s3_server.env().items() if k != "AWS_ENDPOINT_URL"}
    endpoint = ("--s3-endpoint-url", s3_server.endpoint)  # the resume and the evaluation name it by flag
    second = run_job("train.py", *train, "--epochs", "2", *endpoint, env=flag_only, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming after epoch 1" in second.stdout and "epoch 2/2:" in second.stdout
    assert [p for p in fs.ls(f"{s3_bucket}/checkpoints/s3train") if "/checkpoint_" in p]
    assert fs.exists(f"{s3_bucket}/model/model.keras") and fs.exists(f"{s3_bucket}/model/metadata.json")

    done = run_job(
        "evaluate.py",
        "--model",
        f"{root}/model",
        "--images",
        f"{root}/val/images",
        "--masks",
        f"{root}/val/masks",
        "--output",
        f"{root}/eval",
        *endpoint,
        env=flag_only,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads(fs.cat_file(f"{s3_bucket}/eval/metrics.json"))
    assert sum(map(sum, metrics["confusion"])) == 8 * 32 * 32


def test_credentials_never_reach_s3_outputs_or_logs(s3_server, s3_bucket, tiny_artifact, mixed_folder):
    """The real credentials of a run against S3 appear in no object it wrote, no log line and no Ray log."""
    import pathlib
    import tempfile

    fs = s3_server.filesystem()
    upload_inputs(fs, s3_bucket, mixed_folder, tiny_artifact)
    ray_tmp = tempfile.mkdtemp(prefix="rs", dir="/tmp")
    done = run_job(
        "segment.py",
        "--input",
        f"s3://{s3_bucket}/photos/",
        "--output",
        f"s3://{s3_bucket}/seg",
        "--model",
        f"s3://{s3_bucket}/models/tiny",
        "--s3-endpoint-url",
        s3_server.endpoint,
        env={**s3_server.env(), "RAY_TMPDIR": ray_tmp},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    written = [p for p in fs.find(f"{s3_bucket}/seg") if not p.endswith("/")]
    assert any(p.endswith(".json") for p in written) and any(p.endswith(".parquet") for p in written)
    blobs = [fs.cat_file(p) for p in written] + [done.stdout.encode(), done.stderr.encode()]
    blobs += [p.read_bytes() for p in pathlib.Path(ray_tmp).rglob("*") if p.is_file() and not p.is_socket()]
    for secret in ADMIN:
        assert not [b for b in blobs if secret.encode() in b], f"{secret} leaked"
    assert len(blobs) > 20

"""tools.serving_client against the TF Serving stand-in, over REST and gRPC, on real images.

The stand-in (tests/serving_stand_in.py) serves the exported model from a
`<base>/cifar10/<version>/` folder on 127.0.0.1. Version 1 is exported with
the class names in capitals, so each response shows which version ran.
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from conftest import LABEL_NAMES, REPO_ROOT
from serving_stand_in import ModelLoadError, ServingStandIn
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2, prediction_service_pb2_grpc

from components import exporter
from tools import serving_client

MODEL_NAME = "cifar10"
CAPITAL_LABEL_NAMES = tuple(name.upper() for name in LABEL_NAMES)


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    # urllib and gRPC would send loopback requests to a proxy set in the environment.
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture(scope="module")
def model_base(export_dir, trained, transform_output, real_images, tmp_path_factory):
    """`<base>/cifar10` with versions 1 (capital class names) and 2, both with warmup requests."""
    base = tmp_path_factory.mktemp("serving") / MODEL_NAME
    shutil.copytree(export_dir, base / "2")
    classifier, base_model = trained
    exporter.export_serving_model(
        classifier, base_model, transform_output, CAPITAL_LABEL_NAMES, str(base / "1")
    )
    warmup_images = [image for image, _ in real_images[: exporter.WARMUP_BATCH_SIZE]]
    for version in ("1", "2"):
        exporter.write_warmup_requests(str(base / version), warmup_images, MODEL_NAME)
    return base


@pytest.fixture(scope="module")
def stand_in(model_base):
    """Serves every version, with labels `stable` (1) and `canary` (2)."""
    server = ServingStandIn(
        MODEL_NAME,
        str(model_base),
        version_policy="all",
        version_labels={"stable": 1, "canary": 2},
    )
    with server:
        yield server


@pytest.fixture(scope="module")
def jpeg_files(cifar_subset) -> list[pathlib.Path]:
    """One real CIFAR-10 test JPEG of each of the first four classes."""
    return [sorted((cifar_subset / "test" / name).iterdir())[0] for name in LABEL_NAMES[:4]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def client_args(protocol: str, port: int, *extra: str) -> list[str]:
    return ["--protocol", protocol, "--host", "127.0.0.1", "--port", str(port), *extra]


def port_of(stand_in: ServingStandIn, protocol: str) -> int:
    return stand_in.rest_port if protocol == "rest" else stand_in.grpc_port


def run_client(capsys, *args: str) -> tuple[int, str, str]:
    status = serving_client.main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def classify_json(capsys, stand_in, protocol: str, images, *extra: str) -> dict:
    status, out, err = run_client(
        capsys, *client_args(protocol, port_of(stand_in, protocol), "--json", *extra), *images
    )
    assert status == 0, err
    return json.loads(out)


def all_probabilities(result: dict) -> list[float]:
    return [entry["probability"] for entry in sorted(result["top_k"], key=lambda e: e["class_id"])]


def test_rest_and_grpc_match_saved_model(stand_in, model_base, jpeg_files, capsys):
    paths = [str(path) for path in jpeg_files]
    signature = tf.saved_model.load(str(model_base / "2")).signatures["serving_default"]
    direct = signature(image_bytes=tf.constant([path.read_bytes() for path in jpeg_files]))

    outputs = {
        protocol: classify_json(capsys, stand_in, protocol, paths, "--top-k", "10")
        for protocol in ("rest", "grpc")
    }

    for protocol, output in outputs.items():
        results = output["results"]
        assert [result["file"] for result in results] == paths
        np.testing.assert_allclose(
            [all_probabilities(result) for result in results],
            direct["probabilities"].numpy(),
            rtol=1e-6,
            err_msg=protocol,
        )
        assert [result["class_id"] for result in results] == direct["class_id"].numpy().tolist()
        expected_names = [name.decode() for name in direct["class_name"].numpy()]
        assert [result["class_name"] for result in results] == expected_names
    rest_top = [[e["class_id"] for e in r["top_k"][:3]] for r in outputs["rest"]["results"]]
    grpc_top = [[e["class_id"] for e in r["top_k"][:3]] for r in outputs["grpc"]["results"]]
    assert rest_top == grpc_top


def test_batches_split_by_batch_size(stand_in, jpeg_files, capsys):
    paths = [str(path) for path in jpeg_files]

    whole = classify_json(capsys, stand_in, "grpc", paths)
    split = classify_json(capsys, stand_in, "grpc", paths, "--batch-size", "3")

    assert [r["class_id"] for r in split["results"]] == [r["class_id"] for r in whole["results"]]
    np.testing.assert_allclose(
        [all_probabilities(r) for r in split["results"]],
        [all_probabilities(r) for r in whole["results"]],
        rtol=1e-5,
    )


def test_text_output_lists_top_k(stand_in, jpeg_files, tmp_path, capsys):
    label_file = tmp_path / "label_names.txt"
    label_file.write_text("\n".join(LABEL_NAMES) + "\n")
    path = str(jpeg_files[0])

    status, out, err = run_client(
        capsys,
        *client_args("rest", stand_in.rest_port, "--top-k", "2", "--label-file", str(label_file)),
        path,
    )

    assert status == 0, err
    lines = out.splitlines()
    assert lines[0] == path
    assert len(lines) == 3
    for rank, line in enumerate(lines[1:], start=1):
        position, name, probability = line.split()
        assert position == f"{rank}."
        assert name in LABEL_NAMES
        assert 0.0 <= float(probability) <= 1.0


def test_text_output_without_labels_names_top_class(stand_in, jpeg_files, capsys):
    status, out, err = run_client(
        capsys, *client_args("grpc", stand_in.grpc_port, "--top-k", "2"), str(jpeg_files[0])
    )

    assert status == 0, err
    first, second = out.splitlines()[1:]
    assert first.split()[1] in LABEL_NAMES
    assert second.split()[1] == "class"


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_latest_version_by_default(stand_in, jpeg_files, protocol, capsys):
    output = classify_json(capsys, stand_in, protocol, [str(jpeg_files[0])])

    assert output["results"][0]["class_name"] in LABEL_NAMES
    if protocol == "grpc":
        assert output["model_version"] == 2


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
@pytest.mark.parametrize(
    ("flags", "names"),
    [
        (["--model-version", "1"], CAPITAL_LABEL_NAMES),
        (["--model-version", "2"], LABEL_NAMES),
        (["--model-version-label", "stable"], CAPITAL_LABEL_NAMES),
        (["--model-version-label", "canary"], LABEL_NAMES),
    ],
)
def test_version_flags_select_version(stand_in, jpeg_files, protocol, flags, names, capsys):
    output = classify_json(capsys, stand_in, protocol, [str(jpeg_files[0])], *flags)

    assert output["results"][0]["class_name"] in names
    if protocol == "grpc":
        assert output["model_version"] == (1 if names == CAPITAL_LABEL_NAMES else 2)


@pytest.mark.parametrize(
    ("protocol", "status_text"), [("rest", "HTTP 404"), ("grpc", "gRPC NOT_FOUND")]
)
def test_unknown_version_not_found(stand_in, jpeg_files, protocol, status_text, capsys):
    status, out, err = run_client(
        capsys,
        *client_args(protocol, port_of(stand_in, protocol), "--model-version", "7"),
        str(jpeg_files[0]),
    )

    assert status == 1
    assert out == ""
    assert status_text in err
    assert "Servable not found for request: Specific(cifar10, 7)" in err


@pytest.mark.parametrize(
    ("protocol", "status_text"), [("rest", "HTTP 400"), ("grpc", "gRPC INVALID_ARGUMENT")]
)
def test_unknown_label_rejected(stand_in, jpeg_files, protocol, status_text, capsys):
    status, _, err = run_client(
        capsys,
        *client_args(protocol, port_of(stand_in, protocol), "--model-version-label", "nope"),
        str(jpeg_files[0]),
    )

    assert status == 1
    assert status_text in err
    assert "Unrecognized servable version label: nope" in err


@pytest.mark.parametrize(
    ("protocol", "status_text"), [("rest", "HTTP 404"), ("grpc", "gRPC NOT_FOUND")]
)
def test_unknown_model_name_shows_server_error(stand_in, jpeg_files, protocol, status_text, capsys):
    status, out, err = run_client(
        capsys,
        *client_args(protocol, port_of(stand_in, protocol), "--model-name", "mnist"),
        str(jpeg_files[0]),
    )

    assert status == 1
    assert out == ""
    assert status_text in err
    assert "Servable not found for request: Latest(mnist)" in err


@pytest.mark.parametrize(
    ("protocol", "status_text"), [("rest", "HTTP 400"), ("grpc", "gRPC INVALID_ARGUMENT")]
)
def test_non_image_file_returns_error(
    stand_in, jpeg_files, tmp_path, protocol, status_text, capsys
):
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("This is text, not a JPEG.\n")

    status, out, err = run_client(
        capsys,
        *client_args(protocol, port_of(stand_in, protocol)),
        str(jpeg_files[0]),
        str(not_image),
    )

    # The SavedModel's input check fails, so the whole request fails, the
    # real image included.
    assert status == 1
    assert out == ""
    assert status_text in err
    assert "Image 1 of the batch (26 bytes) is not a JPEG, PNG, GIF or BMP image" in err


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_connection_refused_exits_2(jpeg_files, protocol, capsys):
    port = free_port()

    status, out, err = run_client(capsys, *client_args(protocol, port), str(jpeg_files[0]))

    assert status == 2
    assert out == ""
    assert f"127.0.0.1:{port}" in err
    assert "refused" in err.lower()


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_silent_server_times_out(jpeg_files, protocol, capsys):
    # The kernel accepts the connection into the listen backlog, and nothing ever responds.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = listener.getsockname()[1]

        status, _, err = run_client(
            capsys, *client_args(protocol, port, "--timeout", "0.5"), str(jpeg_files[0])
        )

    assert status == 2
    assert f"127.0.0.1:{port}" in err
    assert "timed out after 0.5 s" in err


def test_unreadable_image_exits_2(jpeg_files, tmp_path, capsys):
    missing = tmp_path / "missing.jpg"

    status, out, err = run_client(
        capsys, *client_args("rest", free_port()), str(jpeg_files[0]), str(missing)
    )

    assert status == 2
    assert out == ""
    assert f"Cannot read image file {missing}" in err
    assert "No such file or directory" in err


def test_folder_as_image_exits_2(tmp_path, capsys):
    status, _, err = run_client(capsys, *client_args("grpc", free_port()), str(tmp_path))

    assert status == 2
    assert f"Cannot read image file {tmp_path}" in err


def test_warmup_replayed_at_load(stand_in):
    # Each version's file contains a one-image and a four-image request.
    assert stand_in.warmup_records == {1: 2, 2: 2}


def test_default_policy_serves_highest_version_only(model_base, jpeg_files, capsys):
    with ServingStandIn(MODEL_NAME, str(model_base)) as latest_only:
        assert latest_only.warmup_records == {2: 2}
        latest = classify_json(capsys, latest_only, "grpc", [str(jpeg_files[0])])
        status, _, err = run_client(
            capsys,
            *client_args("rest", latest_only.rest_port, "--model-version", "1"),
            str(jpeg_files[0]),
        )

    assert latest["model_version"] == 2
    assert status == 1
    assert "Servable not found for request: Specific(cifar10, 1)" in err


def test_failing_warmup_fails_load(model_base, tmp_path):
    version = tmp_path / MODEL_NAME / "1"
    version.mkdir(parents=True)
    for name in ("saved_model.pb", "variables", "fingerprint.pb"):
        if (model_base / "2" / name).exists():
            os.symlink(model_base / "2" / name, version / name)
    (version / "assets.extra").mkdir()
    # Written directly, because write_warmup_requests rejects images that do not decode.
    [request] = exporter.build_warmup_requests([b"not an image"])
    log = prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request)
    )
    warmup_file = version / "assets.extra" / "tf_serving_warmup_requests"
    with tf.io.TFRecordWriter(str(warmup_file)) as writer:
        writer.write(log.SerializeToString())

    with pytest.raises(
        ModelLoadError, match="(?s)Warmup of cifar10 version 1 failed: .*is not a JPEG, PNG"
    ):
        ServingStandIn(MODEL_NAME, str(tmp_path / MODEL_NAME))


def test_stand_in_rest_columnar_format(stand_in, jpeg_files):
    images = [path.read_bytes() for path in jpeg_files[:2]]
    body = {"inputs": [{"b64": base64.b64encode(image).decode()} for image in images]}
    request = urllib.request.Request(
        f"http://127.0.0.1:{stand_in.rest_port}/v1/models/cifar10/versions/2:predict",
        data=json.dumps(body).encode(),
        method="POST",
    )

    with urllib.request.urlopen(request, timeout=30) as response:
        outputs = json.load(response)["outputs"]

    assert set(outputs) == {"probabilities", "class_id", "class_name"}
    assert np.array(outputs["probabilities"]).shape == (2, len(LABEL_NAMES))
    assert all(name in LABEL_NAMES for name in outputs["class_name"])


def test_stand_in_rest_model_status(stand_in):
    url = f"http://127.0.0.1:{stand_in.rest_port}/v1/models/cifar10"

    with urllib.request.urlopen(url, timeout=30) as response:
        status = json.load(response)

    versions = status["model_version_status"]
    assert [entry["version"] for entry in versions] == ["2", "1"]
    assert {entry["state"] for entry in versions} == {"AVAILABLE"}


def test_stand_in_grpc_response_model_spec(stand_in, jpeg_files):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL_NAME
    request.inputs["image_bytes"].CopyFrom(
        tf.make_tensor_proto([jpeg_files[0].read_bytes()], dtype=tf.string, shape=[1])
    )

    with grpc.insecure_channel(f"127.0.0.1:{stand_in.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(request, timeout=30)

    assert response.model_spec.name == MODEL_NAME
    assert response.model_spec.version.value == 2
    assert response.model_spec.signature_name == "serving_default"
    assert tf.make_ndarray(response.outputs["probabilities"]).shape == (1, len(LABEL_NAMES))


def test_client_help_lists_flags():
    completed = subprocess.run(
        [sys.executable, "-m", "tools.serving_client", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert completed.returncode == 0, completed.stderr
    for flag in ("--protocol", "--host", "--port", "--model-version", "--model-version-label"):
        assert flag in completed.stdout
    for flag in ("--signature-name", "--timeout", "--top-k", "--json"):
        assert flag in completed.stdout

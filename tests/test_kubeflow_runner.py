"""kubeflow_runner.py: the compiled KFP v2 spec, parsed with kfp's own protos, and submission."""

from __future__ import annotations

import http.server
import json
import threading

import pytest
from conftest import LABEL_NAMES
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

import kubeflow_runner
from pipeline import config as cfg
from pipeline import pipeline

IMAGE = "registry.example.com/cifar10-tfx:1.2.3"
PIPELINE_ROOT = "gs://example-bucket/pipeline"
BEAM_ARGUMENTS = ["--beam-arg=--temp_location=gs://example-bucket/tmp", "--direct-num-workers=2"]


def compile_arguments(output, *extra: str) -> list[str]:
    return [
        "--image",
        IMAGE,
        "--pipeline-root",
        PIPELINE_ROOT,
        "--data-root",
        "gs://example-bucket/data",
        "--serving-dir",
        "gs://example-bucket/serving",
        "--base-weights",
        "none",
        "--fine-tune-epochs",
        "7",
        "--output",
        str(output),
        *BEAM_ARGUMENTS,
        *extra,
    ]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """(PipelineJob proto, raw text) of a pipeline compiled by the runner's main()."""
    output = tmp_path_factory.mktemp("kfp") / "pipeline.json"
    assert kubeflow_runner.main(compile_arguments(output)) == 0
    text = output.read_text()
    job = pipeline_spec_pb2.PipelineJob()
    json_format.Parse(text, job, ignore_unknown_fields=False)
    return job, text


def executors(job) -> dict:
    spec = json_format.MessageToDict(job.pipeline_spec)
    return spec["deploymentSpec"]["executors"]


def test_spec_parses_into_kfp_pipeline_spec(compiled):
    job, _ = compiled
    spec = pipeline_spec_pb2.PipelineSpec()
    json_format.ParseDict(json_format.MessageToDict(job.pipeline_spec), spec)

    assert spec.pipeline_info.name == cfg.PIPELINE_NAME
    assert spec.schema_version == "2.0.0"


def test_spec_holds_every_local_component(compiled, tmp_path):
    job, _ = compiled
    tasks = set(json_format.MessageToDict(job.pipeline_spec)["root"]["dag"]["tasks"])
    local = pipeline.create_pipeline(
        cfg.PipelineConfig(
            data_root=str(tmp_path),
            pipeline_root=str(tmp_path / "root"),
            serving_base=str(tmp_path / "serving"),
            metadata_path=None,
            label_names=LABEL_NAMES,
            training=cfg.TrainingConfig(base_weights="none"),
        )
    )

    for component in local.components:
        # A Resolver compiles to one task per resolved channel.
        matching = {task for task in tasks if task == component.id or task.startswith(component.id)}
        assert matching, f"{component.id} missing from {sorted(tasks)}"


def test_every_container_uses_configured_image(compiled):
    job, _ = compiled
    containers = [value["container"] for value in executors(job).values() if "container" in value]

    assert len(containers) >= 8
    assert {container["image"] for container in containers} == {IMAGE}


def test_pipeline_root_and_beam_arguments_carried(compiled):
    job, _ = compiled
    assert job.runtime_config.gcs_output_directory == PIPELINE_ROOT

    for component in ("StatisticsGen", "Transform", "Evaluator"):
        arguments = executors(job)[f"{component}_executor"]["container"]["args"]
        assert "--temp_location=gs://example-bucket/tmp" in arguments
        assert "--direct_running_mode=multi_processing" in arguments
        assert "--direct_num_workers=2" in arguments


def test_spec_refers_to_image_paths_not_this_checkout(compiled):
    _, text = compiled

    assert "/pipeline/components/trainer.py" in text
    assert "/pipeline/components/transform.py" in text
    assert "/pipeline/schemas/schema.pbtxt" in text
    assert cfg.REPO_ROOT not in text


def test_training_hyperparameters_reach_trainer(compiled):
    _, text = compiled
    trainer = json.loads(text)["pipelineSpec"]["root"]["dag"]["tasks"]["Trainer"]
    constant = trainer["inputs"]["parameters"]["custom_config"]["runtimeValue"]["constantValue"]
    custom_config = json.loads(constant["stringValue"])

    assert custom_config["training"]["fine_tune_epochs"] == 7
    assert custom_config["training"]["base_weights"] == "none"
    assert custom_config["label_names"] == list(LABEL_NAMES)


def test_local_weights_file_rejected(tmp_path, capsys):
    weights = tmp_path / "resnet50.h5"
    weights.write_bytes(b"")
    arguments = compile_arguments(tmp_path / "p.json")
    arguments[arguments.index("none")] = str(weights)

    assert kubeflow_runner.main(arguments) == 2
    assert not (tmp_path / "p.json").exists()


def test_yaml_output_parses(tmp_path):
    import yaml

    output = tmp_path / "pipeline.yaml"

    assert kubeflow_runner.main(compile_arguments(output)) == 0
    job = pipeline_spec_pb2.PipelineJob()
    json_format.ParseDict(yaml.safe_load(output.read_text()), job)
    assert job.pipeline_spec.fields["pipelineInfo"].struct_value.fields["name"].string_value


class KfpApiStandIn(http.server.BaseHTTPRequestHandler):
    """The few KFP v2beta1 REST routes that kfp.Client uses to create a run."""

    requests: list = []

    def _reply(self, body: dict) -> None:
        payload = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self):  # noqa: N802 - http.server's naming.
        self.requests.append(("GET", self.path, None))
        if self.path.startswith("/apis/v2beta1/experiments"):
            self._reply({"experiments": []})
        else:
            self._reply({})

    def do_POST(self):  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        self.requests.append(("POST", self.path, body))
        if self.path == "/apis/v2beta1/experiments":
            self._reply({"experiment_id": "experiment-1", "display_name": body["display_name"]})
        elif self.path == "/apis/v2beta1/runs":
            self._reply({"run_id": "run-1", "display_name": body.get("display_name")})
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


def test_endpoint_submits_compiled_spec(tmp_path):
    KfpApiStandIn.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), KfpApiStandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    output = tmp_path / "pipeline.json"
    try:
        status = kubeflow_runner.main(
            compile_arguments(output, "--endpoint", endpoint, "--run-name", "nightly")
        )
    finally:
        server.shutdown()
        server.server_close()

    assert status == 0
    [run] = [body for method, path, body in KfpApiStandIn.requests if path == "/apis/v2beta1/runs"]
    compiled_job = json.loads(output.read_text())
    assert run["pipeline_spec"] == compiled_job["pipelineSpec"]
    assert run["runtime_config"]["pipeline_root"] == PIPELINE_ROOT
    assert run["display_name"] == "nightly"
    assert run["experiment_id"] == "experiment-1"


def test_unreachable_endpoint_reports_failure(tmp_path):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    status = kubeflow_runner.main(
        compile_arguments(tmp_path / "p.json", "--endpoint", f"http://127.0.0.1:{port}")
    )

    assert status == 1
    assert (tmp_path / "p.json").is_file()

"""A loopback stand-in for TensorFlow Serving's model server, for tests.

No TF Serving binary or Docker engine is available to the tests, so this module
serves a model base folder the way `tensorflow_model_server
--model_name=<name> --model_base_path=<base>/<name>` does, with
`tf.saved_model.load` in place of TF Serving's C++ loader.

Reproduced from TF Serving 2.16 (behaviour taken from its sources:
model_servers/http_rest_api_handler.cc, http_server.cc, util/json_tensor.cc,
servables/tensorflow/predict_util.cc and saved_model_warmup_util.cc):
- Version folders: numeric subfolder names. The default version policy loads
  only the highest version; version_policy="all" loads every version, and
  version_labels maps labels to loaded versions as a model config file does.
- Warmup: assets.extra/tf_serving_warmup_requests is read at load time, a
  TFRecord file of PredictionLog records, and each Predict request is run once.
  More than 1000 records, an unparsable record or a failing request fails the
  load. `warmup_records[version]` is the number of records replayed.
- REST on 127.0.0.1: POST /v1/models/<name>[/versions/<v>|/labels/<l>]:predict
  with the row ("instances") or columnar ("inputs") format, {"b64": ...}
  strings, and {"predictions": ...} or {"outputs": ...} responses.
  GET /v1/models/<name>[/versions/<v>] returns the model status. Errors are
  {"error": <message>} with TF Serving's messages and its mapping of status
  codes to HTTP (INVALID_ARGUMENT and FAILED_PRECONDITION 400, NOT_FOUND 404).
- gRPC on 127.0.0.1: PredictionService.Predict, with output_filter, the
  response's model_spec filled, and errors as INVALID_ARGUMENT, NOT_FOUND or
  FAILED_PRECONDITION with TF Serving's messages.

Not reproduced: Classify, Regress, MultiInference and GetModelMetadata, for
which REST returns 501 and gRPC UNIMPLEMENTED. Nor are ModelService, polling
the base folder for new versions, batching, model config files or monitoring.
Errors raised inside the TensorFlow graph carry TensorFlow's Python wording,
which differs in detail from TF Serving's. Output strings that are not valid
UTF-8 are replaced rather than written raw. A failed load raises
ModelLoadError from the constructor, while TF Serving keeps running and
reports the version as failed.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import re
import threading
import urllib.parse
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow_serving.apis import (
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
DEFAULT_SIGNATURE = "serving_default"
WARMUP_PATH = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000

# TF Serving's REST paths (http_rest_api_handler.cc).
PREDICT_PATH = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
    r":(classify|regress|predict)"
)
STATUS_PATH = re.compile(
    r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
)

# TF Serving's mapping of status codes to HTTP statuses (http_server.cc).
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
# tf.errors.OpError.error_code uses the same numbers as gRPC status codes.
STATUS_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


class ServingError(Exception):
    """An error that the server returns to the client, with its status code."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class ModelLoadError(RuntimeError):
    """No version could be loaded, or a version's warmup failed."""


@dataclass
class LoadedVersion:
    version: int
    path: str
    model: Any
    warmup_records: int = 0


class ModelServer:
    """The loaded versions of one model and the Predict logic shared by REST and gRPC."""

    def __init__(
        self,
        model_name: str,
        model_base_path: str,
        version_policy: str = "latest",
        version_labels: dict[str, int] | None = None,
    ):
        if version_policy not in ("latest", "all"):
            raise ValueError(f"version_policy must be 'latest' or 'all', got {version_policy!r}.")
        self.model_name = model_name
        self.model_base_path = model_base_path
        versions = find_versions(model_base_path)
        if not versions:
            raise ModelLoadError(
                f"No versions of servable {model_name} found under base path {model_base_path}: "
                "expected numeric version folders."
            )
        if version_policy == "latest":
            versions = versions[-1:]
        self.versions = {version: self._load(version) for version in versions}
        self.version_labels = dict(version_labels or {})
        for label, version in self.version_labels.items():
            if version not in self.versions:
                raise ModelLoadError(
                    f"Version label {label} refers to version {version}, which is not loaded."
                )

    @property
    def warmup_records(self) -> dict[int, int]:
        """Number of warmup records replayed at load, per version."""
        return {version: loaded.warmup_records for version, loaded in self.versions.items()}

    def _load(self, version: int) -> LoadedVersion:
        path = os.path.join(self.model_base_path, str(version))
        logger.info("Loading servable %s version %d from %s", self.model_name, version, path)
        loaded = LoadedVersion(version, path, tf.saved_model.load(path))
        try:
            loaded.warmup_records = self._replay_warmup(loaded)
        except ServingError as error:
            raise ModelLoadError(
                f"Warmup of {self.model_name} version {version} failed: {error.message}"
            ) from error
        logger.info(
            "Loaded servable %s version %d, %d warmup records replayed",
            self.model_name,
            version,
            loaded.warmup_records,
        )
        return loaded

    def _replay_warmup(self, loaded: LoadedVersion) -> int:
        path = os.path.join(loaded.path, WARMUP_PATH)
        if not os.path.exists(path):
            logger.info("No warmup data file found at %s", path)
            return 0
        count = 0
        try:
            for record in tf.data.TFRecordDataset(path):
                log = prediction_log_pb2.PredictionLog()
                try:
                    log.ParseFromString(record.numpy())
                except DecodeError as error:
                    raise ServingError(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"Failed to parse warmup record from {path}: {error}",
                    ) from error
                kind = log.WhichOneof("log_type")
                if kind == "predict_log":
                    self._run_predict(loaded, log.predict_log.request)
                elif kind is not None:
                    # NOTE: TF Serving also replays classify, regress and multi-inference
                    # logs, and rejects session_run logs; the stand-in runs Predict only.
                    raise ServingError(
                        grpc.StatusCode.UNIMPLEMENTED,
                        f"Unsupported log_type for warmup in the stand-in: {kind}",
                    )
                count += 1
                if count > MAX_WARMUP_RECORDS:
                    raise ServingError(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) "
                        f"at {path}",
                    )
        except tf.errors.DataLossError as error:
            raise ServingError(
                grpc.StatusCode.DATA_LOSS,
                f"{error.message}. Please verify your warmup data is in TFRecord format.",
            ) from error
        return count

    def resolve(self, name: str, version: int | None, label: str | None) -> LoadedVersion:
        """Return the loaded version that a request names, or raise TF Serving's error."""
        if label:
            if name == self.model_name and label in self.version_labels:
                version = self.version_labels[label]
            else:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Unrecognized servable version label: {label}",
                )
        if name != self.model_name or (version is not None and version not in self.versions):
            request = f"Latest({name})" if version is None else f"Specific({name}, {version})"
            raise ServingError(
                grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {request}"
            )
        return self.versions[max(self.versions) if version is None else version]

    def signature(self, loaded: LoadedVersion, signature_name: str) -> Any:
        name = signature_name or DEFAULT_SIGNATURE
        if name not in loaded.model.signatures:
            raise ServingError(
                grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{name}" not found.'
            )
        return loaded.model.signatures[name]

    def predict(
        self,
        loaded: LoadedVersion,
        signature_name: str,
        inputs: dict[str, np.ndarray],
        output_filter: list[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run a signature on numpy inputs and return its outputs as numpy arrays."""
        function = self.signature(loaded, signature_name)
        input_specs = signature_inputs(function)
        if set(inputs) != set(input_specs):
            sent_extra = sorted(set(inputs) - set(input_specs))
            missing = sorted(set(input_specs) - set(inputs))
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input size does not match signature: {len(inputs)}!={len(input_specs)} "
                f"len({{{','.join(sorted(inputs))}}}) != len({{{','.join(sorted(input_specs))}}}). "
                f"Sent extra: {{{','.join(sent_extra)}}}. "
                f"Missing but required: {{{','.join(missing)}}}.",
            )
        arguments = {}
        for name, value in inputs.items():
            spec = input_specs[name]
            if spec.dtype == tf.string:
                matches = value.dtype.kind in "SO"
            else:
                matches = value.dtype.kind not in "SUO" and tf.as_dtype(value.dtype) == spec.dtype
            if not matches:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Input {name} must be {spec.dtype.name}, got an array of {value.dtype}.",
                )
            arguments[name] = tf.constant(value, dtype=spec.dtype)
        outputs = function.structured_outputs
        for alias in output_filter or []:
            if alias not in outputs:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"output tensor alias not found in signature: {alias} Outputs expected to "
                    f"be in the set {{{','.join(sorted(outputs))}}}.",
                )
        try:
            results = function(**arguments)
        except tf.errors.OpError as error:
            code = STATUS_BY_NUMBER[error.error_code]
            raise ServingError(code, graph_error_message(error)) from error
        except (TypeError, ValueError) as error:  # inputs that do not fit the signature's shapes
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from error
        requested_outputs = output_filter or sorted(results)
        return {name: results[name].numpy() for name in requested_outputs}

    def _run_predict(
        self, loaded: LoadedVersion, request: predict_pb2.PredictRequest
    ) -> dict[str, np.ndarray]:
        try:
            inputs = {name: tf.make_ndarray(tensor) for name, tensor in request.inputs.items()}
        except (TypeError, ValueError) as error:  # a TensorProto whose values do not fit its shape
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from error
        return self.predict(
            loaded, request.model_spec.signature_name, inputs, list(request.output_filter)
        )

    def grpc_predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        spec = request.model_spec
        version_choice = spec.WhichOneof("version_choice")
        loaded = self.resolve(
            spec.name,
            spec.version.value if version_choice == "version" else None,
            spec.version_label if version_choice == "version_label" else None,
        )
        outputs = self._run_predict(loaded, request)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = spec.name
        response.model_spec.version.value = loaded.version
        response.model_spec.signature_name = spec.signature_name or DEFAULT_SIGNATURE
        for name, value in outputs.items():
            response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
        return response

    def rest_predict(self, loaded: LoadedVersion, body: bytes) -> dict[str, Any]:
        """Run a JSON predict request as TF Serving's REST API does (json_tensor.cc)."""
        try:
            document = json.loads(body)
        except ValueError as error:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT, f"JSON Parse error: {error}"
            ) from error
        if not isinstance(document, dict):
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT, f"JSON Value: {body[:200]!r} Is not object"
            )
        signature_name = document.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "'signature_name' key must be a string value.",
            )
        function = self.signature_for_rest(loaded, signature_name)
        input_specs = signature_inputs(function)

        if "instances" in document and "inputs" in document:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "Not formatted correctly expecting only one of 'inputs' or 'instances' keys "
                "to exist",
            )
        if "instances" in document:
            inputs = instances_to_inputs(document["instances"], input_specs)
            outputs = self.predict(loaded, signature_name, inputs)
            return {"predictions": row_format(outputs)}
        if "inputs" in document:
            inputs = columnar_to_inputs(document["inputs"], input_specs)
            outputs = self.predict(loaded, signature_name, inputs)
            return {"outputs": columnar_format(outputs)}
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Missing 'inputs' or 'instances' key")

    def signature_for_rest(self, loaded: LoadedVersion, signature_name: str) -> Any:
        # The REST handler looks the signature up first, with its own message.
        name = signature_name or DEFAULT_SIGNATURE
        if name not in loaded.model.signatures:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f'Serving signature name: "{name}" not found in signature def',
            )
        return loaded.model.signatures[name]

    def status(self, name: str | None, version: int | None) -> dict[str, Any]:
        """Return GetModelStatusResponse as JSON, as TF Serving's REST status API does."""
        if not name:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Missing model name in request.")
        if name != self.model_name:
            raise ServingError(
                grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {name}"
            )
        if version is not None and version not in self.versions:
            raise ServingError(
                grpc.StatusCode.NOT_FOUND, f"Could not find version {version} of model {name}"
            )
        versions = [version] if version is not None else sorted(self.versions, reverse=True)
        return {
            "model_version_status": [
                {
                    "version": str(number),
                    "state": "AVAILABLE",
                    "status": {"error_code": "OK", "error_message": ""},
                }
                for number in versions
            ]
        }


def graph_error_message(error: tf.errors.OpError) -> str:
    """Strip the lines that TensorFlow's Python runtime adds around a graph error's message."""
    message = error.message
    marker = "<stack traces unavailable>\n"
    if marker in message:
        message = message.split(marker, 1)[1]
    return re.sub(r"\s*\[Op:[^\]]*\]\s*$", "", message)


def find_versions(model_base_path: str) -> list[int]:
    """Return the numeric version folders under the base path, in increasing order."""
    if not os.path.isdir(model_base_path):
        return []
    return sorted(
        int(name)
        for name in os.listdir(model_base_path)
        if name.isdigit() and os.path.isdir(os.path.join(model_base_path, name))
    )


def signature_inputs(function: Any) -> dict[str, tf.TensorSpec]:
    _, keyword_specs = function.structured_input_signature
    return dict(keyword_specs)


def json_to_array(value: Any, spec: tf.TensorSpec, where: str) -> np.ndarray:
    """Convert a JSON value to an array of the spec's dtype, decoding {"b64": ...} strings."""

    def convert(item: Any) -> Any:
        if isinstance(item, list):
            return [convert(element) for element in item]
        if isinstance(item, dict):
            if spec.dtype != tf.string or set(item) != {"b64"} or not isinstance(item["b64"], str):
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"JSON Value: {json.dumps(item)[:200]} not formatted correctly for base64 "
                    f"data ({where})",
                )
            try:
                return base64.b64decode(item["b64"], validate=True)
            except ValueError as error:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT, f"Unable to base64 decode ({where})"
                ) from error
        if spec.dtype == tf.string:
            if not isinstance(item, str):
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"JSON Value: {json.dumps(item)} is not of expected type: string ({where})",
                )
            return item.encode("utf-8")
        return item

    converted = convert(value)
    try:
        if spec.dtype == tf.string:
            return np.array(converted, dtype=object)
        return np.array(converted, dtype=spec.dtype.as_numpy_dtype)
    except (ValueError, TypeError) as error:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"JSON Value: {json.dumps(value)[:200]} is not of expected type: "
            f"{spec.dtype.name} ({where})",
        ) from error


def is_named_object(value: Any) -> bool:
    return isinstance(value, dict) and set(value) != {"b64"}


def instances_to_inputs(
    instances: Any, input_specs: dict[str, tf.TensorSpec]
) -> dict[str, np.ndarray]:
    """Batch the row format: one element per instance, a plain value when there is one input."""
    if not isinstance(instances, list):
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT, "Excepting 'instances' to be an list/array"
        )
    if not instances:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "No values in 'instances' array")
    named = is_named_object(instances[0])
    if not named and len(input_specs) > 1:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "instances is a plain list, but expecting list of objects as multiple input tensors "
            "required as per tensorinfo_map",
        )
    columns: dict[str, list[Any]] = {name: [] for name in input_specs}
    for index, instance in enumerate(instances):
        if named != is_named_object(instance):
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Expecting {'object' if named else 'value/list'} but got "
                f"{'value/list' if named else 'object'} at item {index} of input list",
            )
        if not named:
            columns[next(iter(input_specs))].append(instance)
            continue
        if set(instance) != set(input_specs):
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Failed to process element: {index} of 'instances' list. JSON object: "
                f"{json.dumps(instance)[:200]} keys must be equal to: "
                f"{','.join(sorted(input_specs))}",
            )
        for name in input_specs:
            columns[name].append(instance[name])
    return {
        name: json_to_array(values, input_specs[name], f"input {name}")
        for name, values in columns.items()
    }


def columnar_to_inputs(inputs: Any, input_specs: dict[str, tf.TensorSpec]) -> dict[str, np.ndarray]:
    """Read the columnar format: a value for a single input, else an object of name to value."""
    if not is_named_object(inputs):
        if len(input_specs) > 1:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "inputs is a plain value/list, but expecting an object as multiple input "
                "tensors required as per tensorinfo_map",
            )
        name = next(iter(input_specs))
        return {name: json_to_array(inputs, input_specs[name], f"input {name}")}
    arrays = {}
    for name, spec in input_specs.items():
        if name not in inputs:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT, f"Missing named input: {name} in 'inputs' object."
            )
        arrays[name] = json_to_array(inputs[name], spec, f"input {name}")
    return arrays


def map_nested(function: Any, value: Any) -> Any:
    if isinstance(value, list):
        return [map_nested(function, element) for element in value]
    return function(value)


def array_to_json(name: str, value: np.ndarray) -> Any:
    """Convert an output to JSON values as TF Serving does (json_tensor.cc).

    Strings of outputs whose name ends in _bytes become {"b64": ...}, other
    strings are text. float32 values keep their shortest round-trip digits.
    """
    if value.dtype == object or value.dtype.kind == "S":
        if name.endswith("_bytes"):
            return map_nested(
                lambda item: {"b64": base64.b64encode(item).decode("ascii")}, value.tolist()
            )
        return map_nested(lambda item: item.decode("utf-8", errors="replace"), value.tolist())
    if value.dtype == np.float32:
        return map_nested(lambda item: float(str(np.float32(item))), value.tolist())
    return value.tolist()


def row_format(outputs: dict[str, np.ndarray]) -> list[Any]:
    batch_sizes = {name: len(value) for name, value in outputs.items()}
    if len(set(batch_sizes.values())) > 1:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"Outputs have inconsistent batch sizes: {batch_sizes}",
        )
    columns = {name: array_to_json(name, value) for name, value in outputs.items()}
    if len(columns) == 1:
        return next(iter(columns.values()))
    size = next(iter(batch_sizes.values()))
    return [{name: column[index] for name, column in columns.items()} for index in range(size)]


def columnar_format(outputs: dict[str, np.ndarray]) -> Any:
    columns = {name: array_to_json(name, value) for name, value in outputs.items()}
    return next(iter(columns.values())) if len(columns) == 1 else columns


class RestHandler(BaseHTTPRequestHandler):
    server: RestServer
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        path = urllib.parse.urlsplit(self.path).path
        match = PREDICT_PATH.fullmatch(path)
        try:
            if not match:
                self.require_v1_path(path)
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT, f"Malformed request: POST {path}"
                )
            name, version, label, method = match.groups()
            if method.lower() != "predict":
                raise ServingError(
                    grpc.StatusCode.UNIMPLEMENTED,
                    f"The TF Serving stand-in implements predict only, not {method}.",
                )
            model = self.server.model_server
            loaded = model.resolve(name, int(version) if version else None, label)
            self.send_json(200, model.rest_predict(loaded, body))
        except ServingError as error:
            self.send_error_json(error)

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        match = STATUS_PATH.fullmatch(path)
        try:
            if path.lower().endswith("/metadata"):
                raise ServingError(
                    grpc.StatusCode.UNIMPLEMENTED,
                    "The TF Serving stand-in does not implement the model metadata API.",
                )
            if not match:
                self.require_v1_path(path)
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT, f"Malformed request: GET {path}"
                )
            name, version, label = match.groups()
            model = self.server.model_server
            if label:
                version = str(model.resolve(name, None, label).version)
            self.send_json(200, model.status(name, int(version) if version else None))
        except ServingError as error:
            self.send_error_json(error)

    def require_v1_path(self, path: str) -> None:
        # TF Serving's HTTP server has no handler outside /v1/, so it returns 404.
        if not path.lower().startswith("/v1/"):
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"No handler for {path}")

    def send_error_json(self, error: ServingError) -> None:
        logger.info("REST %s %s failed: %s %s", self.command, self.path, error.code.name, error)
        self.send_json(HTTP_STATUS.get(error.code, 500), {"error": error.message})

    def send_json(self, status: int, document: dict[str, Any]) -> None:
        payload = json.dumps(document, indent=1).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("REST %s", format % args)


class RestServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, model_server: ModelServer):
        super().__init__((LOOPBACK, port), RestHandler)
        self.model_server = model_server


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, model_server: ModelServer):
        self.model_server = model_server

    def Predict(self, request, context):
        try:
            return self.model_server.grpc_predict(request)
        except ServingError as error:
            logger.info("gRPC Predict failed: %s %s", error.code.name, error)
            context.abort(error.code, error.message)


class ServingStandIn:
    """REST and gRPC servers on 127.0.0.1 for one model; a context manager.

    Port 0 (the default) picks a free ephemeral port; read `rest_port` and
    `grpc_port` after construction. Loading, with warmup, happens in the
    constructor, so the servers start only with a loaded model.
    """

    def __init__(
        self,
        model_name: str,
        model_base_path: str,
        rest_port: int = 0,
        grpc_port: int = 0,
        version_policy: str = "latest",
        version_labels: dict[str, int] | None = None,
    ):
        self.model_server = ModelServer(model_name, model_base_path, version_policy, version_labels)
        self.host = LOOPBACK
        self._rest = RestServer(rest_port, self.model_server)
        self.rest_port = self._rest.server_address[1]
        self._rest_thread = threading.Thread(
            target=self._rest.serve_forever, name="stand-in-rest", daemon=True
        )
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionServicer(self.model_server), self._grpc
        )
        try:
            self.grpc_port = self._grpc.add_insecure_port(f"{LOOPBACK}:{grpc_port}")
        except RuntimeError:
            self.grpc_port = 0
        if self.grpc_port == 0:
            self._rest.server_close()
            raise OSError(f"Cannot bind the gRPC server to {LOOPBACK}:{grpc_port}.")

    @property
    def warmup_records(self) -> dict[int, int]:
        return self.model_server.warmup_records

    def start(self) -> ServingStandIn:
        self._rest_thread.start()
        self._grpc.start()
        logger.info(
            "Serving %s on %s: REST port %d, gRPC port %d",
            self.model_server.model_name,
            self.host,
            self.rest_port,
            self.grpc_port,
        )
        return self

    def stop(self) -> None:
        self._grpc.stop(grace=None).wait()
        if self._rest_thread.is_alive():
            self._rest.shutdown()
        self._rest.server_close()
        logger.info("Stopped serving %s", self.model_server.model_name)

    def __enter__(self) -> ServingStandIn:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    """Serve a model on 127.0.0.1 until interrupted, with tensorflow_model_server's flag names."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_name", required=True)
    parser.add_argument("--model_base_path", required=True)
    parser.add_argument("--port", type=int, default=8500, help="gRPC port on 127.0.0.1")
    parser.add_argument("--rest_api_port", type=int, default=8501, help="REST port on 127.0.0.1")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    with ServingStandIn(
        args.model_name, args.model_base_path, args.rest_api_port, args.port
    ) as stand_in:
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            logger.info("Interrupted; stopping (warmup records %s).", stand_in.warmup_records)


if __name__ == "__main__":
    main()

"""Classify image files with a model served by TensorFlow Serving, over REST or gRPC.

    python -m tools.serving_client --protocol grpc --model-version 3 cat.jpg dog.png

Sends the encoded files, unchanged, to the Predict API as the signature's
single string input (serving_default by default). REST requests carry them as
{"b64": ...} instances and gRPC requests as a DT_STRING tensor. Prints the
top-k classes of each image, or JSON with --json.

Exit codes:
  0  success
  1  the server returned an error, which is printed with its HTTP or gRPC status
  2  invalid arguments, an unreadable image file, no connection, or a timeout
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

DEFAULT_REST_PORT = 8501
DEFAULT_GRPC_PORT = 8500
# Name of the input in gRPC requests: the exported model's serving_default
# input. REST instances carry no name, which TF Serving accepts when the
# signature has a single input.
GRPC_INPUT_NAME = "image_bytes"

EXIT_SERVER_ERROR = 1
EXIT_LOCAL_ERROR = 2


class ServerError(Exception):
    """The server received the request and returned an error."""


class ClientError(Exception):
    """A local failure: an unreadable file, no connection to the server, or a timeout."""


@dataclass
class Prediction:
    """The outputs of one image: probabilities over all classes and the top class."""

    probabilities: list[float]
    class_id: int | None = None
    class_name: str | None = None


@dataclass
class PredictResult:
    predictions: list[Prediction]
    # Only gRPC responses report the version that served the request.
    model_version: int | None = None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.serving_client",
        description="Classify image files with a model served by TensorFlow Serving.",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="JPEG, PNG, GIF or BMP files")
    parser.add_argument(
        "--protocol", choices=("rest", "grpc"), default="rest", help="API to call (default: rest)"
    )

    # Where the server is, and which model, version and signature to call.
    parser.add_argument("--host", default="localhost", help="server host (default: localhost)")
    parser.add_argument(
        "--port",
        type=int,
        help=f"server port (default: {DEFAULT_REST_PORT} for REST, {DEFAULT_GRPC_PORT} for gRPC)",
    )
    parser.add_argument(
        "--model-name", default="cifar10", help="model name on the server (default: cifar10)"
    )
    version = parser.add_mutually_exclusive_group()
    version.add_argument(
        "--model-version",
        type=int,
        metavar="N",
        help="version number to call (default: the server's latest version)",
    )
    version.add_argument(
        "--model-version-label",
        metavar="LABEL",
        help="version label from the server's model config, e.g. stable",
    )
    parser.add_argument(
        "--signature-name",
        default="serving_default",
        help="SavedModel signature to call (default: serving_default)",
    )

    # Request and output options.
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="seconds to wait: the deadline of each gRPC request, or the REST timeout for "
        "connecting and for each read (default: 30)",
    )
    parser.add_argument(
        "--top-k", type=int, default=3, metavar="K", help="classes to print per image (default: 3)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=32,
        metavar="N",
        help="maximum images per request (default: 32)",
    )
    parser.add_argument(
        "--label-file",
        metavar="FILE",
        help="file of class names, one per line in class id order, such as label_names.txt "
        "of the prepared data. Without it, only the top class is named, by the model's "
        "class_name output",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)

    if args.port is None:
        args.port = DEFAULT_REST_PORT if args.protocol == "rest" else DEFAULT_GRPC_PORT
    if not 0 < args.port < 65536:
        parser.error(f"--port must be in 1..65535, got {args.port}")
    if args.timeout <= 0:
        parser.error(f"--timeout must be positive, got {args.timeout}")
    if args.top_k < 1:
        parser.error(f"--top-k must be at least 1, got {args.top_k}")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.model_version is not None and args.model_version < 0:
        parser.error(f"--model-version must not be negative, got {args.model_version}")
    return args


def host_port(host: str, port: int) -> str:
    """Format host:port, with brackets around an IPv6 address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def read_images(paths: list[str]) -> list[bytes]:
    images = []
    for path in paths:
        try:
            with open(path, "rb") as handle:
                images.append(handle.read())
        except OSError as error:
            raise ClientError(f"Cannot read image file {path}: {error.strerror}.") from error
    return images


def read_label_file(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as handle:
            return [line.strip() for line in handle if line.strip()]
    except OSError as error:
        raise ClientError(f"Cannot read label file {path}: {error.strerror}.") from error


# REST


def rest_url(args: argparse.Namespace) -> str:
    path = f"/v1/models/{urllib.parse.quote(args.model_name, safe='')}"
    if args.model_version is not None:
        path += f"/versions/{args.model_version}"
    elif args.model_version_label:
        path += f"/labels/{urllib.parse.quote(args.model_version_label, safe='')}"
    return f"http://{host_port(args.host, args.port)}{path}:predict"


def predict_rest(args: argparse.Namespace, images: list[bytes]) -> PredictResult:
    """POST a row-format predict request, with each image as {"b64": ...}."""
    body = {
        "signature_name": args.signature_name,
        "instances": [{"b64": base64.b64encode(image).decode("ascii")} for image in images],
    }
    request = urllib.request.Request(
        rest_url(args),
        data=json.dumps(body).encode("utf-8"),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    address = host_port(args.host, args.port)
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            payload = response.read()
    except urllib.error.HTTPError as error:
        raise ServerError(
            f"HTTP {error.code} from {address}: {rest_error_message(error.read())}"
        ) from error
    except urllib.error.URLError as error:
        raise connection_error(address, error.reason, args.timeout) from error
    except (TimeoutError, ConnectionError) as error:
        raise connection_error(address, error, args.timeout) from error
    except http.client.HTTPException as error:
        raise ClientError(
            f"Invalid HTTP response from {address} ({type(error).__name__}): is this TF "
            "Serving's REST port (--rest_api_port)?"
        ) from error

    try:
        predictions = [prediction_from_rest(value) for value in json.loads(payload)["predictions"]]
    except (ValueError, KeyError, TypeError) as error:
        raise ServerError(
            f"Invalid response from {address}: expected JSON 'predictions' with probabilities, "
            f"got {payload[:200]!r}."
        ) from error
    return PredictResult(predictions)


def rest_error_message(body: bytes) -> str:
    """Return the message of TF Serving's {"error": ...} body, or the start of another body."""
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        text = body.decode("utf-8", errors="replace").strip()
        return text[:500] or "(empty response body)"


def prediction_from_rest(value: Any) -> Prediction:
    # With several outputs, each prediction is an object of output name to value.
    # With a single output, it is the value itself, taken as the probabilities.
    if not isinstance(value, dict):
        return Prediction(probabilities=[float(number) for number in value])
    class_id = value.get("class_id")
    class_name = value.get("class_name")
    return Prediction(
        probabilities=[float(number) for number in value["probabilities"]],
        class_id=int(class_id) if class_id is not None else None,
        class_name=str(class_name) if class_name is not None else None,
    )


def connection_error(address: str, reason: Any, timeout: float) -> ClientError:
    if isinstance(reason, TimeoutError):
        return ClientError(f"Request to {address} timed out after {timeout:g} s.")
    if isinstance(reason, ConnectionRefusedError):
        return ClientError(
            f"Connection refused by {address}: is TF Serving running and listening there?"
        )
    if isinstance(reason, socket.gaierror):
        return ClientError(f"Cannot resolve the host of {address}: {reason.strerror}.")
    return ClientError(f"Cannot connect to {address}: {reason}.")


# gRPC


def predict_grpc(args: argparse.Namespace, images: list[bytes]) -> PredictResult:
    """Call PredictionService.Predict with the images as a DT_STRING tensor of shape [n]."""
    # Imported here so that REST calls and --help do not pay for TensorFlow's import.
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = args.model_name
    request.model_spec.signature_name = args.signature_name
    if args.model_version is not None:
        request.model_spec.version.value = args.model_version
    elif args.model_version_label:
        request.model_spec.version_label = args.model_version_label
    request.inputs[GRPC_INPUT_NAME].CopyFrom(
        tf.make_tensor_proto(images, dtype=tf.string, shape=[len(images)])
    )

    address = host_port(args.host, args.port)
    with grpc.insecure_channel(address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            response = stub.Predict(request, timeout=args.timeout)
        except grpc.RpcError as error:
            code, details = error.code(), error.details()
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise ClientError(
                    f"Request to {address} timed out after {args.timeout:g} s ({details})."
                ) from error
            if code == grpc.StatusCode.UNAVAILABLE:
                raise ClientError(f"Cannot connect to {address}: {details}") from error
            raise ServerError(f"gRPC {code.name} from {address}: {details}") from error

    outputs = {name: tf.make_ndarray(tensor) for name, tensor in response.outputs.items()}
    if "probabilities" not in outputs:
        raise ServerError(f"The response has no 'probabilities' output: {sorted(outputs)}.")
    predictions = []
    for index, probabilities in enumerate(outputs["probabilities"]):
        # str() of a float32 gives its shortest round-trip digits, as REST responses have.
        prediction = Prediction(probabilities=[float(str(number)) for number in probabilities])
        if "class_id" in outputs:
            prediction.class_id = int(outputs["class_id"][index])
        if "class_name" in outputs:
            prediction.class_name = outputs["class_name"][index].decode("utf-8", errors="replace")
        predictions.append(prediction)
    version = response.model_spec.version.value if response.model_spec.HasField("version") else None
    return PredictResult(predictions, model_version=version)


# Output


def top_classes(
    prediction: Prediction, top_k: int, label_names: list[str] | None
) -> list[dict[str, Any]]:
    """Return the top_k classes, most probable first, named where a name is known."""
    ranked = sorted(
        range(len(prediction.probabilities)),
        key=lambda class_id: prediction.probabilities[class_id],
        reverse=True,
    )[:top_k]
    classes = []
    for class_id in ranked:
        if label_names and class_id < len(label_names):
            name = label_names[class_id]
        elif class_id == prediction.class_id:
            name = prediction.class_name
        else:
            name = None
        classes.append(
            {
                "class_id": class_id,
                "class_name": name,
                "probability": prediction.probabilities[class_id],
            }
        )
    return classes


def format_text(results: list[dict[str, Any]]) -> str:
    lines = []
    for result in results:
        lines.append(result["file"])
        for rank, entry in enumerate(result["top_k"], start=1):
            name = entry["class_name"] or f"class {entry['class_id']}"
            lines.append(f"  {rank}. {name:<16} {entry['probability']:.4f}")
    return "\n".join(lines)


def classify(args: argparse.Namespace) -> dict[str, Any]:
    label_names = read_label_file(args.label_file) if args.label_file else None
    images = read_images(args.images)
    predict = predict_rest if args.protocol == "rest" else predict_grpc

    predictions: list[Prediction] = []
    versions = set()
    for start in range(0, len(images), args.batch_size):
        batch = images[start : start + args.batch_size]
        result = predict(args, batch)
        if len(result.predictions) != len(batch):
            raise ServerError(
                f"The server returned {len(result.predictions)} predictions for "
                f"{len(batch)} images."
            )
        predictions.extend(result.predictions)
        versions.add(result.model_version)

    results = []
    for path, prediction in zip(args.images, predictions, strict=True):
        results.append(
            {
                "file": path,
                "class_id": prediction.class_id,
                "class_name": prediction.class_name,
                "top_k": top_classes(prediction, args.top_k, label_names),
            }
        )
    return {
        "protocol": args.protocol,
        "server": host_port(args.host, args.port),
        "model_name": args.model_name,
        # The version that served the requests. Only gRPC responses report it, so it is
        # null over REST, and also when different versions served the batches.
        "model_version": versions.pop() if len(versions) == 1 else None,
        "signature_name": args.signature_name,
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        output = classify(args)
    except ServerError as error:
        print(f"Server error: {error}", file=sys.stderr)
        return EXIT_SERVER_ERROR
    except ClientError as error:
        print(f"Error: {error}", file=sys.stderr)
        return EXIT_LOCAL_ERROR
    if args.json:
        print(json.dumps(output, indent=2))
    else:
        print(format_text(output["results"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

# Image of the pipeline's components for Kubeflow Pipelines.
#   docker build -t REGISTRY/cifar10-tfx:TAG . && docker push REGISTRY/cifar10-tfx:TAG
# then compile with: python kubeflow_runner.py --image REGISTRY/cifar10-tfx:TAG ...
#
# The TFX image brings TFX 1.16.0 and its libraries. This repository goes to
# /pipeline (kubeflow_runner.py's --code-root), where the compiled pipeline
# looks for the Transform and Trainer module files and the schema.
FROM tensorflow/tfx:1.16.0

WORKDIR /pipeline
COPY setup.py requirements.txt README.md ./
COPY pipeline/ pipeline/
COPY components/ components/
COPY schemas/ schemas/
COPY tools/ tools/
COPY local_runner.py kubeflow_runner.py ./

# The base image already holds the dependencies; --no-deps keeps its versions.
RUN pip install --no-cache-dir --no-deps -e .

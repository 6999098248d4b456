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
# matplotlib draws the RunReport component's figures: the pins of
# requirements.txt for it and its dependencies beyond those of TFX.
# NOTE: not built here (no Docker engine); unchecked whether the TFX image
# already has other versions of these packages.
RUN pip install --no-cache-dir --no-deps matplotlib==3.9.2 contourpy==1.3.0 cycler==0.12.1 \
    fonttools==4.54.1 kiwisolver==1.4.7

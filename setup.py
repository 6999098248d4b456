"""Package of the CIFAR-10 TFX pipeline: pipeline definition, component code and runners.

Install the pinned dependency set first (TFX 1.16 declares Python <3.11, so pip
needs --ignore-requires-python), then this package without dependencies:

    pip install --ignore-requires-python --no-deps -r requirements.txt
    pip install --no-deps -e .
"""

from setuptools import setup

# Direct dependencies, pinned to the versions of requirements.txt that were
# tested together; requirements.txt pins their dependencies too.
INSTALL_REQUIRES = [
    "tfx==1.16.0",
    "tensorflow==2.16.2",
    "keras==3.6.0",
    "tensorflow-transform==1.16.0",
    "tensorflow-data-validation==1.16.1",
    "tensorflow_model_analysis==0.47.1",
    "tensorflow-metadata==1.16.1",
    "tfx-bsl==1.16.1",
    "ml-metadata==1.16.0",
    "apache-beam==2.59.0",
    "tensorflow-serving-api==2.16.1",
    "kfp==2.13.0",
    "matplotlib==3.9.2",
    "numpy==1.26.4",
    "pillow==10.4.0",
    "protobuf==4.25.9",
]

setup(
    name="cifar10-tfx-pipeline",
    version="0.1.0",
    description="TFX pipeline from CIFAR-10 images to a ResNet50 served by TensorFlow Serving",
    python_requires=">=3.10,<3.12",
    packages=["pipeline", "components", "tools"],
    py_modules=["local_runner", "kubeflow_runner"],
    package_data={"": ["*.pbtxt"]},
    install_requires=INSTALL_REQUIRES,
    entry_points={
        "console_scripts": [
            "cifar10-prepare-data=components.data_preparation:main",
            "cifar10-local-run=local_runner:main",
            "cifar10-kubeflow-compile=kubeflow_runner:main",
            "cifar10-inspect-metadata=tools.inspect_metadata:main",
            "cifar10-serving-client=tools.serving_client:main",
            "cifar10-make-report=tools.make_report:main",
        ]
    },
)

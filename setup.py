from setuptools import find_packages, setup

setup(
    name="tvm_patch",
    version="0.1.0",
    description="Patch-based inference for microcontrollers on Apache TVM (Relax/TIR)",
    python_requires=">=3.10",
    packages=find_packages(include=["tvm_patch", "tvm_patch.*"]),
    package_data={"tvm_patch.mcu": ["firmware/*.c", "firmware/*.h"]},
    install_requires=[
        "apache-tvm==0.27.*",
        "numpy",
        "onnx",
        "tflite",
        "flatbuffers",
        "xgboost",
        "cython",
        "matplotlib",
        "tqdm",
        "pyserial",
    ],
    extras_require={
        "test": ["pytest", "hypothesis", "tflite-micro", "onnxruntime", "ray"],
        "ray": ["ray"],
    },
    entry_points={"console_scripts": ["tvm-patch=tvm_patch.cli:main"]},
)

from setuptools import find_packages, setup

# onnx / onnxruntime are bounded to the combination the test suite has run with.
ONNX = ["onnx>=1.16,<1.24", "onnxruntime>=1.18,<1.33"]

setup(
    name="darknet_py",
    version="0.1.0",
    description="Darknet .cfg/.weights first-class in PyTorch, with darknet's own numerics and training",
    packages=find_packages(include=["darknet_py", "darknet_py.*"]),
    package_data={"darknet_py.data": ["builtin/*.cfg"]},
    python_requires=">=3.9",
    install_requires=["torch>=2.1", "numpy", "numba>=0.59", "opencv-python-headless", "pycocotools",
                      "safetensors", "tqdm"],
    extras_require={
        "onnx": ONNX,
        "test": ["pytest", "opencv-python-headless<5", *ONNX, "openvino>=2024.0"],
        "extras": [*ONNX, "tensorboard"],
    },
    entry_points={"console_scripts": ["darknet-py=darknet_py.cli:main"]},
)

from setuptools import find_packages, setup

setup(
    name="darknet_py",
    version="0.1.0",
    description="Darknet .cfg/.weights first-class in PyTorch, with darknet's own numerics and training",
    packages=find_packages(include=["darknet_py", "darknet_py.*"]),
    python_requires=">=3.9",
    install_requires=["torch>=2.1", "numpy", "opencv-python-headless", "pycocotools"],
    extras_require={
        "test": ["pytest", "opencv-python-headless<5", "onnx", "onnxruntime", "safetensors",
                 "tqdm"],
        "extras": ["safetensors", "onnx", "tqdm", "tensorboard"],
    },
    entry_points={"console_scripts": ["darknet-py=darknet_py.cli:main"]},
)

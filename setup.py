"""gpt_ds as a package: `pip install .` or a wheel (`pip wheel --no-deps .`) runs from any directory.

The presets stay where users edit them, configs/ and ds_configs/ at the top of the tree; the build copies them into
gpt_ds/_data/ inside the wheel, where gpt_ds.config finds them when there is no source tree around it.
"""
import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildWithPresets(build_py):
    def run(self):
        if not self.editable_mode:  # setuptools reuses build/lib: a module moved or deleted would ship again
            shutil.rmtree(Path(self.build_lib) / "gpt_ds", ignore_errors=True)
        super().run()
        if self.editable_mode:  # an editable install reads the source tree itself
            return
        for folder in ("configs", "ds_configs"):
            dest = Path(self.build_lib) / "gpt_ds" / "_data" / folder
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(HERE / folder, dest)


setup(
    name="gpt_ds",
    version="0.1.0",
    description="ELECTRA-style (generator + discriminator) pretraining on DeepSpeed ZeRO-3, exported as Hugging Face checkpoints",
    packages=find_packages(include=["gpt_ds", "gpt_ds.*"]),
    package_data={"gpt_ds.kernels": ["*.cpp"]},  # the CPU kernels are built from source on first use
    cmdclass={"build_py": BuildWithPresets},
    python_requires=">=3.10",
    # torch is pinned to a range that 2.13.0 satisfies, so an installed torch is never replaced by a download.
    install_requires=[
        "torch>=2.4,<2.14",
        "deepspeed>=0.16,<0.20",
        "transformers>=5.0,<6",
        "accelerate>=1.0",
        "datasets>=3.0",
        "sentencepiece>=0.2",
        "tokenizers>=0.20",
        "safetensors>=0.4",
        "numpy>=1.26",
        "PyYAML>=6.0",
        "tqdm>=4.60",
        "psutil>=5.9",
        "tensorboard>=2.15",
        "protobuf>=4",
        "scikit-learn>=1.3",
        "scipy>=1.10",  # the Mann-Whitney p-value between fine-tuning seeds
    ],
    extras_require={
        "dev": ["pytest>=8", "triton>=3.0"],
        "kernels": ["triton>=3.0"],
        "plot": ["matplotlib>=3.7"],
        "wandb": ["wandb>=0.19"],  # logging.wandb
    },
    entry_points={"console_scripts": ["gpt-ds=gpt_ds.cli:main"]},
)

"""gje_jax: Gaussian (Mixture) Joint Embeddings for self-supervised learning in JAX."""

import re

from setuptools import find_packages, setup

# The version is written once, in gje_jax/__init__.py.
with open("gje_jax/__init__.py", encoding="utf-8") as f:
    VERSION = re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)

CORE = [
    "jax>=0.9",
    "flax>=0.10",
    "optax>=0.2.4",
    "chex>=0.1.88",
    "numpy>=1.26",
    "ml-collections>=1.0",  # the declared settings of methods, models and optimisers are ConfigDicts
]
EXPERIMENTS = [
    "orbax-checkpoint>=0.11",
    "absl-py>=2.1",
    "tensorflow-datasets>=4.9.7",
    "array_record>=0.5",
    "tqdm>=4.66",
    "matplotlib>=3.8",
    "tensorboardX>=2.6",
    "scikit-learn>=1.4",
]
TEST = EXPERIMENTS + [
    "pytest>=8",
    "pytest-timeout>=2.3",
    "pytest-xdist>=3.5",
    "scipy>=1.11",
    "threadpoolctl>=3.1",
    "hypothesis>=6.100",
    "nbclient>=0.10",
    "nbformat>=5.10",
    "ipykernel>=6.29",
    "ruff>=0.6",
]
BENCHMARKS = ["distrax>=0.1.5", "tfp-nightly", "scikit-learn>=1.4", "grain>=0.2"]

setup(
    name="gje_jax",
    version=VERSION,
    description="Gaussian Joint Embeddings (GJE) and Gaussian Mixture Joint Embeddings (GMJE) in JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    # The experiments/ folder installs as `gje_experiments` (a generic top-level name like
    # `experiments` would shadow a user's own package).
    packages=find_packages(include=["gje_jax", "gje_jax.*"])
    + ["gje_experiments", "gje_experiments.configs", "gje_experiments.benchmarks"],
    package_dir={"gje_experiments": "experiments"},
    python_requires=">=3.10",
    install_requires=CORE,
    extras_require={
        "experiments": EXPERIMENTS,
        "test": TEST,
        "benchmarks": BENCHMARKS,
        "all": sorted(set(TEST + BENCHMARKS)),
    },
    entry_points={"console_scripts": ["gje-train=gje_experiments.main:run"]},
    license="Apache-2.0",
    license_files=["LICENSE"],
)

"""comd_jax: Competitive Multi-modal Distillation in JAX/Flax NNX."""
from setuptools import find_packages, setup

# Ranges stay loose on purpose: accelerator machines bring their own JAX/flax
# builds and install this package with `pip install --no-deps -e .`.
INSTALL_REQUIRES = [
    "jax>=0.6",
    "flax>=0.11",
    "optax>=0.2.4",
    "orbax-checkpoint>=0.11",
    "ml_collections>=0.1.1",
    "absl-py>=1.0",
    "numpy>=1.26",
    "safetensors>=0.4",
    "transformers>=4.45",
    "tokenizers>=0.19",
    "pillow>=10.0",
    "tqdm>=4.60",
    "tensorboardX>=2.6",  # TensorBoard event files without TensorFlow
    # Augmentation's near-duplicate filter (ROUGE-L, as Lion/self-instruct use): a compiled LCS.
    "rapidfuzz>=3.0",
    # Input pipeline (comd_jax/data): grain's checkpointable iterators; TFDS
    # read/written without TensorFlow through array_record.
    "grain>=0.2.10",
    "tensorflow-datasets>=4.9.7",
    "array-record>=0.5",
    # TFDS imports it on Python >= 3.9 but only declares it for < 3.9.
    "importlib_resources>=5",
    "matplotlib>=3.5",  # evaluation reports: PNG plots (Agg backend)
    "aiohttp>=3.9",  # the teacher server and its client (comd_jax/serve)
]

TEST_REQUIRES = [
    "pytest>=8",
    "pytest-xdist>=3.5",  # the suite runs on every core (setup.cfg: -n auto), end-to-end runs beside the rest
    # Test-only PyTorch reference for parity; the exact pin takes the CPU build on disk.
    "torch==2.13.0",
    # The official client talks to our server in tests/serve/test_serve.py.
    "openai>=1.30",
    "rouge-score>=0.1.2",  # the reference the ROUGE-L filter is checked against (tests/distill/test_rouge.py)
    "nbformat>=5",  # reads launch/colab_tpu_demo.ipynb to run its cells on CPU (test_colab_notebook.py)
]

setup(
    name="comd_jax",
    version="0.1.0",
    description="Competitive Multi-modal Distillation (CoMD) of LLaVA-style models in JAX/Flax NNX",
    packages=find_packages(include=["comd_jax", "comd_jax.*"]),
    # The offline world's teacher, a transformers LLaVA directory (comd_jax/distill/world_teacher.py).
    package_data={"comd_jax": ["assets/world_teacher/*"]},
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES},
)

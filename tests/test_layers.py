"""The package's layers: every import (top-level or inside a function) goes from a layer to itself or to one below.

The order is the data flow, shared pieces below the stages that use them; it is written here once
and shown in the README's layout section. A module that is in no layer fails too: place it.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LAYERS = [
    # foundation: the package root (its version), errors, logging, atomic files, test hooks, configs,
    # output folders, weight files
    ["kssgan_hpc", "kssgan_hpc.errors", "kssgan_hpc.logs", "kssgan_hpc.files", "kssgan_hpc.testhooks",
     "kssgan_hpc.config", "kssgan_hpc.folders", "kssgan_hpc.weights"],
    ["kssgan_hpc.data"],          # the shard format, the reader, samplers, pixel conventions
    ["data_prep"],                # `kssgan prep`: raw faces -> shards
    ["kssgan_hpc.distributed"],   # launcher variables -> torch.distributed, the device rule, collectives
    ["kssgan_hpc.checkpoints"],   # the checkpoint layout and its manager
    ["kssgan_hpc.models"],        # Siamese encoder, generator, discriminator
    ["kssgan_hpc.engine"],        # Accelerate / DeepSpeed behind one interface
    ["kssgan_hpc.artefacts"],     # loading the trained Siamese and generator
    ["kssgan_hpc.ksame"],         # k-Same clusters, base faces, the de-identifications; `kssgan cluster`
    ["kssgan_hpc.attack"],        # attackers, recognizers, measures, KID, the gate's measurement
    ["kssgan_hpc.train"],         # the Siamese and GAN loops, losses, checkpoint selection
    ["kssgan_hpc.release"],       # `kssgan anonymize`: the gate's verdict and the release
    ["kssgan_hpc.evaluate"],      # `kssgan evaluate`: the report; held-out validation
    ["kssgan_hpc.launch"],        # Slurm jobs through submitit
    ["kssgan_hpc.sweep"],         # Nevergrad populations of trials
    ["kssgan_hpc.cli"],           # the `kssgan` command
]
PACKAGES = ("kssgan_hpc", "data_prep")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int | None:
    """The layer of the longest entry naming `module` or a package above it (the root only itself)."""
    best, depth = None, -1
    for index, entries in enumerate(LAYERS):
        for entry in entries:
            if module == entry or (entry != "kssgan_hpc" and module.startswith(entry + ".")):
                if entry.count(".") > depth:
                    best, depth = index, entry.count(".")
    return best


def imports(path: Path, package: str) -> list[tuple[str, int]]:
    """(imported module, line) for every import of the project's packages in a file of `package`, at any
    depth (inside functions too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the file's own package upward
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from package import module` imports the module: name it, where it is one
            names = [f"{base}.{alias.name}" if (ROOT / Path(*base.split("."), alias.name)).exists()
                     or (ROOT / Path(*base.split("."), alias.name + ".py")).exists() else base
                     for alias in node.names]
        else:
            continue
        found += [(name, node.lineno) for name in dict.fromkeys(names) if name.split(".")[0] in PACKAGES]
    return found


def sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def package_of(path: Path) -> str:
    return module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]


def test_every_module_has_a_layer() -> None:
    unplaced = [module_name(p) for p in sources() if layer_of(module_name(p)) is None]
    assert not unplaced, f"modules in no layer (add them to LAYERS in {Path(__file__).name}): {unplaced}"


def test_no_import_climbs_a_layer() -> None:
    climbing = []
    for path in sources():
        here = layer_of(module_name(path))
        for name, line in imports(path, package_of(path)):
            there = layer_of(name)
            if here is not None and there is not None and there > here:
                climbing.append(f"{path.relative_to(ROOT)}:{line} imports {name} "
                                f"(layer {there} {LAYERS[there][0]} > layer {here} {LAYERS[here][0]})")
    assert not climbing, "imports that climb the layers:\n" + "\n".join(climbing)


def test_the_check_sees_imports_inside_functions_and_relative_ones(tmp_path: Path) -> None:
    """The walker itself: a climbing import hidden in a function, or written relative, is found."""
    probe = tmp_path / "probe.py"  # as if it were kssgan_hpc/data/probe.py
    probe.write_text("def f():\n    from kssgan_hpc.train.run import Run\n    from ..release import gate\n")
    found = {name for name, _ in imports(probe, "kssgan_hpc.data")}
    assert {"kssgan_hpc.train.run", "kssgan_hpc.release.gate"} <= found
    assert layer_of("kssgan_hpc.train.run") > layer_of("kssgan_hpc.data.probe")
    assert layer_of("kssgan_hpc.release.gate") > layer_of("kssgan_hpc.data.probe")

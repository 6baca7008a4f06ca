"""The registries: every target resolves inside the package that owns it, and config, check_params
and the params table take their names from them (never from a list of their own)."""

from __future__ import annotations

import ast
import inspect
import re
from dataclasses import asdict

import pytest

from pipeline.core import catalog
from pipeline.core.catalog import (
    ARCH_FAMILIES,
    ARCHS,
    PROVIDERS,
    RUNTIMES,
    SOURCES,
    VARIANTS,
    arch_names,
    resolve,
)
from pipeline.core.config import ParamsError, parse_params
from pipeline.tools.params_table import params_table

# (registry entries, the package that resolves their targets)
OWNED = [
    (list(SOURCES), "pipeline.sources"),
    (list(ARCHS), "pipeline.models"),
    (ARCH_FAMILIES, "pipeline.models"),
    (list(VARIANTS), "pipeline.export"),
    (list(RUNTIMES), "pipeline.bench"),
]
TARGETS = [(entry, package) for entries, package in OWNED for entry in entries]


@pytest.mark.parametrize(("entry", "package"), TARGETS, ids=[e.name for e, _ in TARGETS])
def test_every_target_resolves_to_a_callable_inside_its_package(entry, package):
    implementation = resolve(entry.target, package)
    assert callable(implementation)
    assert implementation.__module__.startswith(f"{package}.")
    assert entry.description and "\n" not in entry.description


def test_a_target_outside_its_package_is_refused():
    with pytest.raises(ValueError, match="not a module:attr inside pipeline.sources"):
        resolve("pipeline.models.small_cnn:SmallCNN", "pipeline.sources")
    with pytest.raises(ValueError, match="not a module:attr"):
        resolve("pipeline.sources.digits", "pipeline.sources")


def test_the_catalog_imports_no_framework():
    """Rank 2, pure data: config.py imports it, and pydantic-free tools may too."""
    tree = ast.parse(inspect.getsource(catalog))
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module)])
    }
    assert imported <= {"__future__", "importlib", "collections", "dataclasses", "typing"}


def test_providers_fall_back_only_to_registered_providers_ending_on_the_cpu():
    for provider in PROVIDERS:
        assert all(name in PROVIDERS for name in provider.fallback)
        last = PROVIDERS[(provider.fallback or (provider.name,))[-1]]
        assert not last.on_gpu
        assert provider.memory_kind == (f"ort_{provider.device}" if provider.on_gpu else "host")
        assert catalog.fallback_chain(provider.name)[0] is provider


def test_provider_options_are_functions_inside_the_benchmark_package():
    for provider in PROVIDERS:
        if provider.options:
            assert callable(catalog.resolve(provider.options, "pipeline.bench")), provider.name


@pytest.mark.parametrize(
    ("section", "key", "registry"),
    [
        ("data", "source", SOURCES),
        ("benchmark", "providers", PROVIDERS),
        ("benchmark", "runtimes", RUNTIMES),
    ],
)
def test_config_accepts_exactly_the_registered_names(section, key, registry):
    for name in registry.names():
        value = [name] if key in ("providers", "runtimes") else name
        assert getattr(getattr(parse_params({section: {key: value}}), section), key) == value
    bad = ["nope"] if key in ("providers", "runtimes") else "nope"
    with pytest.raises(ParamsError, match=f"must be one of {', '.join(registry.names())}"):
        parse_params({section: {key: bad}})


@pytest.mark.parametrize("value", [True, 1, 1.5, None])
def test_registry_fields_stay_strict(value):
    for section, key in [("data", "source"), ("model", "arch")]:
        with pytest.raises(ParamsError, match=f"'{section}.{key}'"):
            parse_params({section: {key: value}})
    with pytest.raises(ParamsError, match="'benchmark.providers.0'"):
        parse_params({"benchmark": {"providers": [value]}})


def test_arch_takes_a_registered_name_or_a_family_member_by_form():
    assert parse_params({"model": {"arch": "resnet_cifar"}}).model.arch == "resnet_cifar"
    assert parse_params({"model": {"arch": "torchvision:anything"}}).model.arch  # check_params'
    for bad in ["resnet9000", "torchvision:", "Small_CNN"]:
        with pytest.raises(ParamsError, match=re.escape(f"one of {', '.join(arch_names())})")):
            parse_params({"model": {"arch": bad}})


def test_fp32_is_always_exported_so_only_derived_variants_can_be_asked_for():
    assert catalog.base_variant() == "fp32" and "fp32" not in catalog.derived_variants()
    assert {"fp16", "int8"} <= set(catalog.derived_variants())  # a recipe may add more
    assert catalog.exported_variants(["int8"]) == ["fp32", "int8"]
    with pytest.raises(ParamsError, match="'export.variants.0': 'fp32'"):
        parse_params({"export": {"variants": ["fp32"]}})


def test_each_variant_brings_its_gate_file_and_precision():
    """export.gates.<variant> exists for every entry, defaulting to the entry's gate."""
    gates = parse_params({}).export.gates
    files = [variant.file for variant in VARIANTS]
    assert len(set(files)) == len(files) and all(f.endswith(".onnx") for f in files)
    for variant in VARIANTS:
        assert gates[variant.name].model_dump() == asdict(variant.gate)
        assert variant.precision in {"fp32", "fp16", "int8"}
        assert not variant.remedy.startswith("(")  # enforce_gates adds the brackets
    with pytest.raises(KeyError, match="export.variants 'int4' is unknown"):
        gates["int4"]


def test_params_table_lists_each_registry_choice():
    rows = {row.split(" | ")[0].strip("| `"): row for row in params_table().splitlines()}
    assert "`cifar10`" in rows["data.source"] and "`imagefolder`" in rows["data.source"]
    assert "`torchvision:<name>`" in rows["model.arch"]
    assert "`tensorrt`" in rows["benchmark.providers"]
    assert "`int8`" in rows["export.variants"] and "`fp32`" not in rows["export.variants"]


def test_unknown_names_are_one_line_keyerrors():
    with pytest.raises(KeyError, match="benchmark.providers 'gpu' is unknown; choose one of cpu"):
        PROVIDERS["gpu"]

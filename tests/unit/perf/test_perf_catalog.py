"""The model and SKU catalogues: built-in contents, lookups and the errors for malformed files."""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path

import pytest
import yaml

from opscale.model import ModelSpec, Sku
from opscale.perf import Catalog, CatalogError, UnknownNameError, load_catalog, parse_models, parse_skus

pytestmark = pytest.mark.unit

REQUIRED_MODELS = ("Llama-2-7B", "Llama-3-8B", "Llama-3-70B", "Mixtral-8x7B", "Qwen2-7B", "Qwen2-57B-A14B")
REQUIRED_SKUS = ("A100-80GB", "H100-80GB", "H200", "L40S", "A10G", "H20", "L20")

GOOD_SKU = """
skus:
  - name: Test-GPU
    gpu_memory_gb: 80
    peak_tflops: 300
    mem_bandwidth_gbps: 2000
    idle_power_w: 50
    max_power_w: 400
    price_usd_per_h: 2.0
    spot_price_usd_per_h: 1.0
    gpus_per_vm: 8
"""


def test_builtin_catalogue_holds_the_required_models_and_skus() -> None:
    catalog = load_catalog()
    assert set(REQUIRED_MODELS) <= set(catalog.model_names)
    assert set(REQUIRED_SKUS) <= set(catalog.sku_names)


@pytest.mark.parametrize(("file", "key", "cls"), [("models.yaml", "models", ModelSpec), ("skus.yaml", "skus", Sku)])
def test_builtin_entries_set_every_field_of_their_type(file: str, key: str, cls: type) -> None:
    text = resources.files("opscale").joinpath("data", file).read_text(encoding="utf-8")
    fields = {f.name for f in dataclasses.fields(cls)}
    for entry in yaml.safe_load(text)[key]:
        assert set(entry) == fields, entry["name"]


@pytest.mark.parametrize(("name", "billions"), [
    ("Llama-2-7B", 6.74), ("Llama-3-8B", 8.03), ("Llama-3-70B", 70.55), ("Mixtral-8x7B", 46.70), ("Qwen2-7B", 7.62),
    ("Qwen2-57B-A14B", 57.40),
])
def test_parameter_counts_match_the_published_sizes(name: str, billions: float) -> None:
    assert load_catalog().model(name).params / 1e9 == pytest.approx(billions, rel=0.01)


def test_mixtral_is_a_top2_of_8_mixture() -> None:
    mixtral = load_catalog().model("Mixtral-8x7B")
    assert (mixtral.experts, mixtral.experts_per_token) == (8, 2)
    assert mixtral.active_params / 1e9 == pytest.approx(12.9, rel=0.02)


def test_lookups_ignore_case() -> None:
    catalog = load_catalog()
    assert catalog.model("llama-3-8b") is catalog.model("LLAMA-3-8B")
    assert catalog.sku("h100-80gb").name == "H100-80GB"


def test_unknown_names_list_the_known_ones() -> None:
    catalog = load_catalog()
    with pytest.raises(UnknownNameError, match=r"unknown model 'GPT-5'.*Llama-3-8B") as info:
        catalog.model("GPT-5")
    assert isinstance(info.value, ValueError)
    with pytest.raises(UnknownNameError, match=r"unknown sku 'TPU'.*H100-80GB"):
        catalog.sku("TPU")


def test_sku_prices_and_power_are_consistent() -> None:
    for sku in load_catalog().skus:
        assert 0 < sku.spot_price_usd_per_h < sku.price_usd_per_h
        assert 0 < sku.idle_power_w < sku.max_power_w


def test_a_directory_of_catalogue_files_replaces_the_builtin_one(tmp_path: Path) -> None:
    builtin = resources.files("opscale").joinpath("data", "models.yaml").read_text(encoding="utf-8")
    (tmp_path / "models.yaml").write_text(builtin)
    (tmp_path / "skus.yaml").write_text(GOOD_SKU)
    catalog = load_catalog(tmp_path)
    assert catalog.sku_names == ("Test-GPU",)
    assert catalog.model("Qwen2-7B") == load_catalog().model("Qwen2-7B")


def test_missing_directory_or_file_is_a_catalog_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="not a directory"):
        load_catalog(tmp_path / "nowhere")
    (tmp_path / "skus.yaml").write_text(GOOD_SKU)
    with pytest.raises(CatalogError, match=r"models\.yaml: cannot read"):
        load_catalog(tmp_path)


@pytest.mark.parametrize(("edit", "message"), [
    (("peak_tflops: 300", "peak_tflops: fast"), r"skus\.yaml: entry 1 \('Test-GPU'\): field 'peak_tflops': expected a number, got 'fast'"),
    (("gpus_per_vm: 8", "gpus_per_vm: 8.5"), r"entry 1 \('Test-GPU'\): field 'gpus_per_vm': expected an integer"),
    (("    gpus_per_vm: 8", "    gpus_per_vm: 8\n    nvlink: yes"), r"field 'nvlink' is not a field of Sku"),
    (("    peak_tflops: 300\n", ""), r"entry 1 \('Test-GPU'\): field 'peak_tflops' is missing"),
    (("gpu_memory_gb: 80", "gpu_memory_gb: -80"), r"entry 1 \('Test-GPU'\): sku 'Test-GPU': gpu_memory_gb must be positive"),
    (("name: Test-GPU", "name: ''"), r"entry 1: field 'name': expected a non-empty string"),
])
def test_malformed_entries_name_file_entry_and_field(edit: tuple[str, str], message: str) -> None:
    text = GOOD_SKU.replace(*edit)
    assert text != GOOD_SKU
    with pytest.raises(CatalogError, match=message):
        parse_skus(text, "skus.yaml")


def test_invalid_yaml_names_the_line() -> None:
    # line 4 is indented wrongly
    with pytest.raises(CatalogError, match=r"models\.yaml:4: invalid YAML"):
        parse_models("models:\n  - name: x\n    layers: 3\n   bad: [\n  - name: y\n", "models.yaml")


def test_a_file_without_its_top_level_list_is_refused() -> None:
    with pytest.raises(CatalogError, match="top-level 'models:'"):
        parse_models("- name: x\n", "models.yaml")


def test_moe_models_need_a_sane_experts_per_token() -> None:
    text = """
models:
  - {name: Bad-MoE, layers: 2, hidden: 64, heads: 4, kv_heads: 4, intermediate: 128, vocab: 100,
     experts: 4, experts_per_token: 0}
"""
    with pytest.raises(CatalogError, match=r"Bad-MoE.*'experts_per_token': must be between 1 and experts"):
        parse_models(text, "models.yaml")


def test_duplicate_names_are_refused_whatever_their_case() -> None:
    models = parse_models("""
models:
  - {name: Tiny, layers: 2, hidden: 64, heads: 4, kv_heads: 4, intermediate: 128, vocab: 100}
  - {name: TINY, layers: 2, hidden: 64, heads: 4, kv_heads: 4, intermediate: 128, vocab: 100}
""")
    with pytest.raises(CatalogError, match="duplicate model name 'TINY'"):
        Catalog(models=models, skus=())

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from tvcall.errors import InputError
from tvcall.functions.catalog import CATALOG_DIR
from tvcall.functions.registry import load_registry

REQUIRED_DOMAINS = {"picture", "sound", "power", "network", "input", "channel", "app", "playback", "search",
                    "media", "smarthome", "system", "info"}


def test_registry_has_1000_functions_over_12_domains(registry):
    stats = registry.stats()
    assert stats["functions"] >= 1000
    assert len(stats["domains"]) >= 12
    assert REQUIRED_DOMAINS <= set(stats["domains"])
    assert "media.movie.query_director" in registry
    assert registry["media.movie.query_director"].required == ["title"]


def test_every_function_has_bilingual_description_valid_schema_and_risk(registry):
    for spec in registry.functions.values():
        assert spec.description.zh[0] and spec.description.en[0]
        jsonschema.Draft202012Validator.check_schema(spec.parameters)
        assert spec.risk in ("normal", "confirm")
    assert registry.risk_counts().get("confirm", 0) >= 5
    assert registry["system.device.factory_reset"].risk == "confirm" if "system.device.factory_reset" in registry else True


def test_schemas_use_integer_bounds_enums_booleans_and_required(registry):
    types = set()
    for spec in registry.functions.values():
        for schema in spec.properties.values():
            types.add("enum" if "enum" in schema else schema["type"])
            if schema["type"] == "integer":
                assert schema["minimum"] < schema["maximum"]
    assert {"enum", "integer", "string", "boolean"} <= types
    assert any(spec.required for spec in registry.functions.values())


def test_openai_tools_export_drops_private_keywords(registry):
    tools = registry.openai_tools("en")
    assert len(tools) == len(registry)
    tool = next(t for t in tools if t["function"]["name"] == "picture.brightness.set")
    assert tool["type"] == "function"
    assert tool["function"]["parameters"]["properties"]["value"] == {"type": "integer", "minimum": 0, "maximum": 100}
    assert "x-" not in json.dumps(tools)


def test_cli_registry_stats_json_prints_functions_and_domains():
    out = subprocess.run([sys.executable, "-m", "tvcall.cli", "registry", "stats", "--json"],
                         capture_output=True, text=True, check=True).stdout
    stats = json.loads(out)
    assert stats["functions"] >= 1000 and sum(stats["domains"].values()) == stats["functions"]


def _catalog_copy(tmp_path: Path) -> Path:
    target = tmp_path / "catalog"
    target.mkdir()
    shutil.copy(CATALOG_DIR / "picture.yaml", target / "picture.yaml")
    return target


def test_duplicate_function_name_names_file_line_and_function(tmp_path):
    catalog = _catalog_copy(tmp_path)
    text = (catalog / "picture.yaml").read_text()
    duplicate = "families:\n  - {kind: level, object: brightness, zh: [亮度], en: [brightness], min: 0, max: 9}\n"
    (catalog / "picture.yaml").write_text(text.replace("families:\n", duplicate, 1))
    with pytest.raises(InputError) as err:
        load_registry(catalog)
    assert "picture.yaml:" in str(err.value) and "picture.brightness.get" in str(err.value) and "duplicate" in str(err.value)
    assert err.value.line is not None


def test_bad_bounds_and_unknown_kind_are_reported_with_field(tmp_path):
    catalog = _catalog_copy(tmp_path)
    bad = "domain: picture\nzh: 画面\nen: picture\nfamilies:\n  - {kind: level, object: glow, zh: [光], en: [glow], min: 5, max: 1}\n"
    (catalog / "picture.yaml").write_text(bad)
    with pytest.raises(InputError, match=r"picture.yaml:5: families\[glow\].max"):
        load_registry(catalog)
    (catalog / "picture.yaml").write_text(bad.replace("kind: level", "kind: dial"))
    with pytest.raises(InputError, match=r"families\[glow\].kind: unknown kind"):
        load_registry(catalog)


def test_template_missing_a_required_param_is_rejected(tmp_path):
    catalog = _catalog_copy(tmp_path)
    (catalog / "picture.yaml").write_text(
        "domain: picture\nzh: 画面\nen: picture\nfunctions:\n  - name: picture.frame.show\n    zh: 显示\n    en: Show\n"
        "    params: [{name: seconds, type: integer, min: 1, max: 9, required: true}]\n"
        "    templates: {zh: ['显示{seconds}秒', '显示', '展示{seconds}'], en: ['show {seconds}', 'a {seconds}', 'b {seconds}']}\n")
    with pytest.raises(InputError, match=r"picture.yaml:5: picture.frame.show.templates.zh: .*lacks required params \['seconds'\]"):
        load_registry(catalog)


def test_full_registry_has_3000_real_functions_and_synth_carries_it_in_the_data_folder(tmp_path):
    from tvcall.data.splits import read_manifest, write_splits
    from tvcall.data.synth import SynthConfig
    from tvcall.functions.registry import named_registry, registry_for_data

    full, core = named_registry("full"), named_registry("core")
    assert len(full) >= 3000 and set(core.names) < set(full.names)
    assert len(full.stats()["domains"]) == len(core.stats()["domains"])
    manifest = write_splits(full, SynthConfig(seed=1, train_size=40, dev_size=5, test_size=5), tmp_path, "full")
    assert manifest["registry"] == len(full) and read_manifest(tmp_path)["registry_name"] == "full"
    assert registry_for_data(tmp_path).names == full.names  # training, eval and serving of this data see all of it

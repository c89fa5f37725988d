"""--set / --config parsing by field type, precedence, unknown names, `minirccn config show`."""

import json

import pytest

from minirccn.config import overrides
from minirccn.app.cli import main
from minirccn.config import preset
from minirccn.core.errors import MinirccnError


@pytest.mark.parametrize(
    "item, key, value",
    [
        ("flip=false", "flip", False),
        ("flip=Yes", "flip", True),
        ("iters=2000", "iters", 2000),
        ("lr=2e-3", "lr", 0.002),
        ("dtype=float64", "dtype", "float64"),
        ("anchor_sizes=24,48,96", "anchor_sizes", (24, 48, 96)),
        ("aspect_ratios=1", "aspect_ratios", (1.0,)),
        ("aspect_ratios=[0.5, 2]", "aspect_ratios", (0.5, 2.0)),
        ("milestones=", "milestones", ()),
        ("milestones=[]", "milestones", ()),
        ("milestones=300,400", "milestones", (300, 400)),
        ("scale_jitter=0.8,1.25", "scale_jitter", (0.8, 1.25)),
        ("backbone_stages=[[8, 1, true], [16, 2, false]]", "backbone_stages",
         ((8, 1, True), (16, 2, False))),
        ("bbox_reg_weights=(10, 10, 5, 5)", "bbox_reg_weights", (10.0, 10.0, 5.0, 5.0)),
    ],
)
def test_set_parses_by_field_type(item, key, value):
    parsed = overrides.parse_sets([item])
    assert parsed == {key: value}
    assert type(parsed[key]) is type(value)
    if isinstance(value, tuple) and value and not isinstance(value[0], tuple):
        assert [type(v) for v in parsed[key]] == [type(v) for v in value]
    preset("tiny").replace(**parsed)  # a valid config


@pytest.mark.parametrize(
    "item, words",
    [
        ("iters=1.5", ["iters", "integer"]),
        ("flip=maybe", ["flip", "true or false"]),
        ("lr=fast", ["lr", "number"]),
        ("anchor_sizes=16,x", ["anchor_sizes", "integer"]),
        ("iters", ["key=value"]),
        ("aspect_ratios=[1,", ["JSON"]),
    ],
)
def test_bad_values_are_one_error_naming_the_field(item, words):
    with pytest.raises(MinirccnError) as e:
        overrides.parse_sets([item])
    for w in words:
        assert w in str(e.value)


def test_unknown_key_suggests_the_nearest_names():
    with pytest.raises(MinirccnError) as e:
        overrides.parse_sets(["anchor_size=16,32"])
    assert "unknown config field 'anchor_size'" in str(e.value)
    assert "anchor_sizes" in str(e.value)
    with pytest.raises(MinirccnError) as e:
        overrides.parse_sets(["zzzzzz=1"])
    assert "config show" in str(e.value)


def test_config_file_and_precedence(tmp_path):
    f = tmp_path / "cfg.json"
    f.write_text(json.dumps({"lr": 0.001, "iters": 77, "anchor_sizes": [10, 20], "flip": False}))
    base = preset("tiny")
    cfg, src = overrides.resolve_config(
        base, {"lr": 0.5, "min_size": 160, "iters": 5}, str(f), ["iters=99"]
    )
    assert cfg.min_size == 160 and src["min_size"] == "derived"  # derived beats the preset
    assert cfg.lr == 0.001 and src["lr"] == "file"  # the file beats derived
    assert cfg.iters == 99 and src["iters"] == "--set"  # --set beats the file
    assert cfg.anchor_sizes == (10, 20) and cfg.flip is False
    assert cfg.max_size == base.max_size and "max_size" not in src
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"lrr": 1}))
    with pytest.raises(MinirccnError, match="bad.json.*'lrr'.*lr"):
        overrides.read_config_file(str(bad))
    bad.write_text(json.dumps({"iters": "many"}))
    with pytest.raises(MinirccnError, match="iters"):
        overrides.read_config_file(str(bad))
    bad.write_text("[1, 2]")
    with pytest.raises(MinirccnError, match="JSON object"):
        overrides.read_config_file(str(bad))


def test_every_field_round_trips_through_set():
    """Each field's default, written as --set text, parses back to itself."""
    cfg = preset("tiny")
    for name in overrides.field_names():
        value = getattr(cfg, name)
        text = json.dumps(value if not isinstance(value, tuple) else list(value))
        text = text.strip('"') if isinstance(value, str) else text
        assert overrides.parse_value(name, text) == value, name


def test_config_show_cli(tmp_path, capsys):
    assert main(["config", "show", "--set", "lr=0.002", "--set", "anchor_sizes=8,16"]) == 0
    out = capsys.readouterr().out
    assert "lr" in out and "0.002  # --set" in out
    assert "anchor_sizes" in out and "[8, 16]  # --set" in out
    assert main(["config", "show", "--json", "--preset", "vgg16"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["backbone"] == "vgg16" and cfg == json.loads(preset("vgg16").to_json())
    assert main(["config", "show", "--set", "rpn_nms_thresh=1.5"]) == 2
    assert "rpn_nms_thresh must be in [0" in capsys.readouterr().err
    assert main(["config", "show", "--set", "scale_jitter=1.2,0.5"]) == 2
    assert "scale_jitter" in capsys.readouterr().err
    assert main(["config", "show", "--set", "lrr=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "did you mean lr" in err[0]

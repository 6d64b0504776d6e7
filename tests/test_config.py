"""Run-settings dataclasses of every family: presets construct and survive the JSON round trip,
bad values are refused with one line naming the field; the shared :meth:`PresetConfig.check`."""

import importlib
import json
import math
from dataclasses import dataclass, fields, replace
from typing import ClassVar

import pytest

from caloforge.models._config import PresetConfig

#: (family package, config class): imported lazily, through the package as users do.
CONFIGS = [
    ("bibae", "BIBAEConfig"),
    ("caloclouds1", "CaloClouds1Config"),
    ("caloclouds2", "CaloClouds2Config"),
    ("caloclouds2", "DistillConfig"),
    ("calodream", "CaloDreamConfig"),
    ("caloinn", "CaloINNConfig"),
    ("epic", "EPiCConfig"),
    ("l2lflows", "L2LFlowsConfig"),
]
IDS = [name for _, name in CONFIGS]


def config_class(family: str, name: str) -> type[PresetConfig]:
    return getattr(importlib.import_module(f"caloforge.models.{family}"), name)


def round_trip(config: PresetConfig) -> PresetConfig:
    return type(config).from_dict(json.loads(json.dumps(config.to_dict())))


@pytest.mark.parametrize(("family", "name"), CONFIGS, ids=IDS)
def test_every_preset_constructs_and_round_trips(family, name):
    cls = config_class(family, name)
    assert {"cpu", "paper", "smoke"} <= set(cls.PRESETS)
    for preset in cls.PRESETS:
        config = cls.from_preset(preset)
        assert isinstance(config, cls) and config == cls.PRESETS[preset]
        assert set(config.to_dict()) == {f.name for f in fields(cls)}
        assert round_trip(config) == config
    assert cls.from_preset("smoke", steps=40).steps == 40


def test_every_epic_variant_preset_round_trips():
    from caloforge.models.epic import VARIANTS, EPiCConfig

    for variant in VARIANTS:
        for preset in EPiCConfig.PRESETS:
            config = EPiCConfig.for_variant(variant, preset)
            assert config.variant == variant and round_trip(config) == config


BAD = [
    ("steps", 0, "must be at least 1, got 0"),
    ("lr", math.nan, "must be "),  # positive (finite)
    ("checkpoint_minutes", -1.0, "must be finite and >= 0, got -1.0"),
    ("checkpoint_minutes", math.nan, "must be finite and >= 0, got nan"),
]


@pytest.mark.parametrize(("field", "value", "what"), BAD, ids=[f"{f}={v}" for f, v, _ in BAD])
@pytest.mark.parametrize(("family", "name"), CONFIGS, ids=IDS)
def test_bad_values_are_refused_naming_the_field(family, name, field, value, what):
    cls = config_class(family, name)
    with pytest.raises(ValueError) as err:
        cls.from_preset("smoke", **{field: value})
    message = str(err.value)
    assert message.startswith(f"{cls.KIND} config: {field} {what}") and "\n" not in message


@pytest.mark.parametrize(("family", "name"), CONFIGS, ids=IDS)
def test_unknown_presets_and_fields_are_refused(family, name):
    cls = config_class(family, name)
    listed = "use one of cpu, paper, (.+, )?smoke"  # CaloDREAM adds its dataset-3 presets
    with pytest.raises(ValueError, match=rf"unknown {cls.KIND} preset 'huge': {listed}"):
        cls.from_preset("huge")
    with pytest.raises(ValueError, match=f"unknown {cls.KIND} config field"):
        cls.from_dict(cls.from_preset("smoke").to_dict() | {"no_such_field": 1})


@pytest.mark.parametrize(
    ("family", "name", "field", "value", "message"),
    [
        (
            "caloinn",
            "CaloINNConfig",
            "kernel",
            2,
            "CaloINN config: kernel must be a positive odd number, got 2",
        ),
        (
            "caloinn",
            "CaloINNConfig",
            "coupling",
            "spline",
            "coupling must be one of rqs, affine, got 'spline'",
        ),
        ("l2lflows", "L2LFlowsConfig", "val_fraction", 0.5, "val_fraction must be in [0, 0.5), got 0.5"),
        ("l2lflows", "L2LFlowsConfig", "n_context", -1, "L2LFlows config: n_context must be >= 0, got -1"),
        ("bibae", "BIBAEConfig", "ema_decay", 1.0, "BIB-AE config: ema_decay must be in [0, 1), got 1.0"),
        ("bibae", "BIBAEConfig", "beta_kl", math.inf, "beta_kl must be finite and >= 0, got inf"),
        ("bibae", "BIBAEConfig", "lr", math.inf, "lr must be a positive finite number, got inf"),
        ("calodream", "CaloDreamConfig", "shape_solver", "heun", "shape_solver must be one of euler"),
        ("caloclouds1", "CaloClouds1Config", "beta_schedule", "cosine", "beta_schedule must be one of"),
        ("caloclouds1", "CaloClouds1Config", "encoder_layers", -1, "encoder_layers must be >= 0"),
        ("caloclouds2", "CaloClouds2Config", "cluster_per_cell", 0, "cluster_per_cell must be at least 1"),
        ("caloclouds2", "CaloClouds2Config", "net_widths", (4, 8, 3), "net_widths must start and end with 4"),
        ("caloclouds2", "CaloClouds2Config", "flow_hidden", (8, 0), "flow_hidden must be positive integers"),
        ("caloclouds2", "DistillConfig", "student_widths", (3, 8, 4), "student_widths must start and end"),
        ("caloclouds2", "DistillConfig", "target_decay", 1.0, "target_decay must be in [0, 1)"),
        (
            "epic",
            "EPiCConfig",
            "variant",
            "vae",
            "EPiC config: variant must be one of gan, fm, jedi, got 'vae'",
        ),
        ("epic", "EPiCConfig", "val_fraction", 0.5, "EPiC config: val_fraction must be in [0, 0.5)"),
    ],
)
def test_family_specific_checks(family, name, field, value, message):
    with pytest.raises(ValueError) as err:
        replace(config_class(family, name).PRESETS["smoke"], **{field: value})  # EPiC: no for_variant
    assert message in str(err.value) and "\n" not in str(err.value)


def test_optional_fields_may_be_none():
    from caloforge.models.caloclouds2 import CaloClouds2Config, DistillConfig

    assert CaloClouds2Config.from_preset("smoke", cluster_per_cell=None).cluster_per_cell is None
    assert DistillConfig.from_preset("smoke", student_widths=None).student_widths is None
    with pytest.raises(TypeError):  # not optional: None is no count
        CaloClouds2Config.from_preset("smoke", steps=None)


@dataclass(frozen=True)
class Toy(PresetConfig):
    KIND: ClassVar[str] = "Toy"

    n: int = 1
    rate: float = 1.0
    frac: float = 0.0
    mode: str = "a"
    checkpoint_minutes: float = 0.0

    def __post_init__(self) -> None:
        self.check(
            at_least_one=("n",), positive=("rate",), fractions={"frac": (0, 0.5)}, choices={"mode": "ab"}
        )


def test_check_boundaries_nan_and_infinity():
    for ok in (Toy(), Toy(n=5, rate=1e-9, frac=0.499, mode="b", checkpoint_minutes=1e9)):
        assert ok.n >= 1
    for bad, field in [
        ({"n": 0}, "n"),
        ({"rate": 0.0}, "rate"),
        ({"rate": math.nan}, "rate"),
        ({"rate": math.inf}, "rate"),
        ({"rate": -math.inf}, "rate"),
        ({"frac": -0.1}, "frac"),
        ({"frac": 0.5}, "frac"),
        ({"frac": math.nan}, "frac"),
        ({"mode": "c"}, "mode"),
        ({"checkpoint_minutes": -1e-9}, "checkpoint_minutes"),  # checked without being named
        ({"checkpoint_minutes": math.inf}, "checkpoint_minutes"),
    ]:
        with pytest.raises(ValueError, match=f"^Toy config: {field} must"):
            Toy(**bad)


def test_above_zero_allows_infinity_but_not_nan():
    @dataclass(frozen=True)
    class Loose(PresetConfig):
        KIND: ClassVar[str] = "Loose"

        rate: float = 1.0

        def __post_init__(self) -> None:
            self.check(above_zero=("rate",))

    assert Loose(rate=math.inf).rate == math.inf  # no checkpoint_minutes field: not checked
    for bad in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match=r"^Loose config: rate must be positive, got"):
            Loose(rate=bad)


@pytest.mark.parametrize(("family", "name"), CONFIGS, ids=IDS)
@pytest.mark.parametrize(
    ("field", "bad"),
    [("steps", 0), ("batch_size", 0), ("log_every", 0), ("lr", math.inf), ("grad_clip", 0.0)],
)
def test_every_config_checks_the_loop_fields(family, name, field, bad):
    cls = config_class(family, name)
    with pytest.raises(ValueError, match=f"^{cls.KIND} config: {field} must"):
        cls.from_preset("smoke", **{field: bad})


@pytest.mark.parametrize(
    ("family", "name"), [c for c in CONFIGS if c[0] in ("bibae", "calodream", "caloinn", "l2lflows")]
)
@pytest.mark.parametrize(("field", "bad"), [("val_every", 0), ("val_fraction", 0.5), ("ema_decay", 1.0)])
def test_ema_configs_check_averaging_and_validation(family, name, field, bad):
    cls = config_class(family, name)
    with pytest.raises(ValueError, match=f"^{cls.KIND} config: {field} must"):
        cls.from_preset("smoke", **{field: bad})


@dataclass(frozen=True)
class Named(PresetConfig):
    KIND: ClassVar[str] = "Named"

    name: str = "cpu"
    sizes: tuple[int, ...] = (1, 2)
    rate: float = 1.0


def test_read_presets_from_a_package_file(tmp_path, monkeypatch):
    pkg = tmp_path / "presetpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "presets.toml").write_text("[cpu]\n\n[big]\nsizes = [3, 4, 5]\nrate = 2.5\n")
    (pkg / "bad.toml").write_text("[odd]\nspeed = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    presets = Named.read_presets("presetpkg")
    assert Named.PRESETS is presets
    assert presets["cpu"] == Named()
    assert presets["big"] == Named(name="big", sizes=(3, 4, 5), rate=2.5)  # arrays become tuples
    assert Named.from_preset("big", rate=1.0).sizes == (3, 4, 5)
    with pytest.raises(ValueError, match="unknown Named config field"):
        Named.read_presets("presetpkg", "bad.toml")


@pytest.mark.parametrize(("family", "name"), CONFIGS, ids=IDS)
def test_cpu_preset_is_the_defaults(family, name):
    cls = config_class(family, name)
    assert cls.PRESETS["cpu"] == cls()

"""Config: the paper's switches per preset, override order, validation and --set parsing."""
import pytest

from pnca_utils.config import (DATA_PRESETS, METHOD_PRESETS, PAPER_DIMS, RECALL_KS, SIZE_PRESETS, Config, ConfigError,
                               make_config, parse_overrides)


def test_proxynca_plus_plus_preset_has_every_enhancement():
    c = make_config("proxynca++", "ci")
    assert c.method == "proxynca"
    assert c.temperature == pytest.approx(1 / 9)
    assert c.positive_in_denominator is True
    assert (c.pooling, c.layernorm, c.sampler) == ("max", True, "balanced")
    # fast proxies: the embedded set's validated rate, 20 times its backbone's; the paper's 4e2 on real data
    assert (c.proxy_lr, c.lr) == (0.4, 2e-2)
    assert make_config("proxynca++", "paper", dataset="cub", data_root="ROOT", weights=None).proxy_lr == 4e2


def test_proxynca_preset_is_the_original():
    c = make_config("proxynca", "ci")
    assert (c.method, c.temperature, c.positive_in_denominator) == ("proxynca", 1.0, False)
    assert (c.pooling, c.layernorm, c.proxy_lr, c.sampler) == ("avg", False, None, "random")


@pytest.mark.parametrize("size", SIZE_PRESETS)
def test_size_presets(size):
    c = make_config("proxynca++", size)
    assert (c.epochs, c.image_size) == (SIZE_PRESETS[size]["epochs"], SIZE_PRESETS[size]["image_size"])


@pytest.mark.parametrize("preset", METHOD_PRESETS)
def test_every_preset_is_valid(preset):
    c = make_config(preset, "ci")
    assert c.method == METHOD_PRESETS[preset]["method"]
    assert c.validate() is c


def test_overrides_are_applied_last():
    c = make_config("proxynca", "ci", temperature=0.5, pooling="max", epochs=5, image_size=40)
    assert (c.temperature, c.pooling, c.epochs, c.image_size) == (0.5, "max", 5, 40)
    assert c.layernorm is False  # untouched preset values stay


@pytest.mark.parametrize("overrides, field", [
    (dict(temperature=0), "temperature"),
    (dict(temperature=-1 / 9), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(lr=0), "lr"),
    (dict(lr=-1e-3), "lr"),
    (dict(embedding_lr=0), "embedding_lr"),
    (dict(proxy_lr=0), "proxy_lr"),
    (dict(epochs=0), "epochs"),
    (dict(epochs=True), "epochs"),
    (dict(batch_size=30, images_per_class=4), "batch_size"),
    (dict(pooling="sum"), "pooling"),
    (dict(dataset="imagenet"), "dataset"),
    (dict(dataset="cub"), "data_root"),
    (dict(warmup_epochs=9, epochs=2), "warmup_epochs"),
    (dict(val_fraction=1.0), "val_fraction"),
    (dict(margin=-0.1), "margin"),
    (dict(seed=-1), "seed"),
    (dict(nonsense=1), "nonsense"),
    (dict(hdml_alpha=0), "hdml_alpha"),
    (dict(hdml_beta=-1e4), "hdml_beta"),
    (dict(hdml_softmax_factor=-1), "hdml_softmax_factor"),
    (dict(hdml_softmax_factor=float("inf")), "hdml_softmax_factor"),
    (dict(hdml_window=0), "hdml_window"),
    (dict(hdml_window=2.5), "hdml_window"),
    (dict(hdml_hidden=True), "hdml_hidden"),
    (dict(hdml_generator_lr=0), "hdml_generator_lr"),
    (dict(hdml_classifier_lr=float("nan")), "hdml_classifier_lr"),
])
def test_invalid_values_name_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field):
        make_config("proxynca++", "ci", **overrides)


def test_proxy_gradient_size_only_gives_a_proxy_loss_the_other_rules_size():
    assert make_config("proxynca++", "ci", proxy_gradient_size="excluded").proxy_gradient_size == "excluded"
    assert make_config("proxynca", "ci", proxy_gradient_size="included").proxy_gradient_size == "included"
    for preset, size in [("proxynca++", "included"), ("proxynca", "excluded"), ("triplet", "included")]:
        with pytest.raises(ConfigError, match="proxy_gradient_size"):
            make_config(preset, "ci", proxy_gradient_size=size)
    with pytest.raises(ConfigError, match="proxy_gradient_size='largest' is not one of own, included, excluded"):
        make_config("proxynca++", "ci", proxy_gradient_size="largest")


def test_npair_needs_two_images_per_class():
    assert make_config("npair", "ci").images_per_class == 2
    with pytest.raises(ConfigError, match="images_per_class=2"):
        make_config("npair", "ci", images_per_class=4)


def test_hdml_presets_and_their_batches():
    c = make_config("hdml-npair", "ci")
    assert (c.method, c.sampler, c.images_per_class) == ("hdml-npair", "balanced", 2)
    assert (c.hdml_alpha, c.hdml_beta, c.hdml_softmax_factor) == (90, 1e4, 1e4)  # the paper's values
    assert make_config("hdml-triplet", "ci").method == "hdml-triplet"
    with pytest.raises(ConfigError, match="images_per_class=2"):
        make_config("hdml-npair", "ci", images_per_class=4)
    for bad in (dict(sampler="random"), dict(images_per_class=1), dict(batch_size=4, images_per_class=4)):
        with pytest.raises(ConfigError, match="positives and negatives"):
            make_config("hdml-triplet", "ci", **bad)
    assert parse_overrides(["hdml_window=8", "hdml_beta=5e3"]) == {"hdml_window": 8, "hdml_beta": 5e3}


def test_random_sampler_allows_any_batch_size():
    assert make_config("proxynca", "ci", batch_size=30, images_per_class=4).batch_size == 30


@pytest.mark.parametrize("preset, size, match", [("proxynca+++", "ci", "preset"), ("proxynca++", "huge", "size")])
def test_unknown_preset_or_size(preset, size, match):
    with pytest.raises(ConfigError, match=f"unknown {match}"):
        make_config(preset, size)


def test_validate_catches_direct_edits():
    c = Config()
    c.temperature = 0.0
    with pytest.raises(ConfigError, match="temperature"):
        c.validate()


def test_parse_overrides_types():
    parsed = parse_overrides(["epochs=3", "temperature=1/9", "lr=1e-3", "layernorm=false",
                              "positive_in_denominator=Yes", "proxy_lr=None", "weights=None",
                              "data_root=null", "lr_milestones=2,4", "pooling= avg "])
    assert parsed == {"epochs": 3, "temperature": pytest.approx(1 / 9), "lr": 1e-3, "layernorm": False,
                      "positive_in_denominator": True, "proxy_lr": None, "weights": None, "data_root": None,
                      "lr_milestones": (2, 4), "pooling": "avg"}
    assert type(parsed["epochs"]) is int and type(parsed["lr"]) is float
    assert parse_overrides(["weights=auto", "lr_milestones="]) == {"weights": "auto", "lr_milestones": ()}
    assert parse_overrides(None) == {}


def test_parsed_none_weights_reach_the_config():
    assert make_config("proxynca++", "ci", **parse_overrides(["weights=None"])).weights is None


@pytest.mark.parametrize("pair, match", [
    ("epochs=2.5", "epochs"),
    ("epochs=None", "epochs"),  # not optional
    ("temperature=abc", "temperature"),
    ("temperature=1/0", "temperature"),
    ("temperature=1/2/3", "temperature"),
    ("layernorm=maybe", "layernorm"),
    ("lr_milestones=2,x", "lr_milestones"),
    ("colour=red", "colour"),
    ("epochs", "key=value"),
])
def test_parse_overrides_rejects_bad_values(pair, match):
    with pytest.raises(ConfigError, match=match):
        parse_overrides([pair])


def test_calibrated_learning_rates_apply_to_the_embedded_set_only():
    from pnca_utils.config import CALIBRATED

    assert make_config("proxynca++").lr == CALIBRATED[("embedded", "proxynca++")]["lr"]
    assert make_config("proxynca").lr == CALIBRATED[("embedded", "proxynca")]["lr"]
    for baseline, hdml in (("triplet", "hdml-triplet"), ("npair", "hdml-npair")):  # HDML at its baseline's rate
        assert make_config(hdml).lr == make_config(baseline).lr == CALIBRATED[("embedded", baseline)]["lr"]
    assert make_config("proxynca++", dataset="cub", data_root="x").lr == 4e-3  # the paper's value
    assert make_config("proxynca++", lr=1e-3).lr == 1e-3  # an override wins


# ---------------------------------------------------------------- the paper's settings on real data sets

def paper(dataset, preset="proxynca++", **overrides):
    return make_config(preset, "paper", dataset=dataset, data_root="/data", weights=None, **overrides)


@pytest.mark.parametrize("dataset, batch, per_class, lr, proxy_lr", [
    ("cub", 32, 4, 4e-3, 4e2), ("cars", 32, 4, 4e-3, 4e2),
    ("sop", 192, 3, 4e-3 * 6, 4e1 * 6), ("inshop", 192, 3, 4e-3 * 6, 4e2 * 6)])  # official configs: both x 6
def test_paper_presets_follow_the_paper(dataset, batch, per_class, lr, proxy_lr):
    c = paper(dataset)
    assert (c.arch, c.image_size, c.embedding_dim) == ("resnet50", 256, 2048)
    assert (c.batch_size, c.images_per_class, c.classes_per_batch) == (batch, per_class, batch // per_class)
    assert (c.lr, c.embedding_lr) == (pytest.approx(lr), None) and c.proxy_lr == pytest.approx(proxy_lr)
    assert (c.adam_eps, c.weight_decay, c.amp) == (1.0, 0.0, True)
    assert c.temperature == pytest.approx(1 / 9)
    assert (c.pooling, c.layernorm, c.sampler, c.positive_in_denominator) == ("max", True, "balanced", True)
    assert 0 < c.warmup_epochs < c.epochs and c.grad_clip is not None
    assert c.epochs - c.warmup_epochs == (40 if batch == 32 else 80)  # the official nb_epochs after warm-up


@pytest.mark.parametrize("dataset", DATA_PRESETS)
@pytest.mark.parametrize("dim", PAPER_DIMS)
@pytest.mark.parametrize("preset", METHOD_PRESETS)
def test_every_method_validates_at_paper_size(dataset, dim, preset):
    c = paper(dataset, preset, embedding_dim=dim)
    assert c.validate() is c and c.embedding_dim == dim and c.dataset == dataset
    assert c.method == METHOD_PRESETS[preset]["method"]


def test_paper_size_keeps_the_methods_switches():
    original = paper("sop", "proxynca")  # the original ProxyNCA at the paper's data settings
    assert (original.proxy_lr, original.sampler, original.pooling, original.temperature) == (None, "random", "avg", 1.0)
    assert (original.batch_size, original.image_size, original.lr) == (192, 256, 2.4e-2)
    assert paper("cub", "npair").images_per_class == 2  # N-pair batches win over the data set's 4
    assert paper("cub", proxy_lr=1e2, epochs=3, warmup_epochs=1).proxy_lr == 1e2  # overrides win


def test_paper_size_needs_a_real_data_set_and_a_weights_choice():
    for dataset in ("embedded", "folder"):
        with pytest.raises(ConfigError, match="size 'paper'.*dataset"):
            make_config("proxynca++", "paper", dataset=dataset, data_root="/data", weights=None)
    with pytest.raises(ConfigError, match="size 'paper'"):
        make_config("proxynca++", "paper")
    with pytest.raises(ConfigError, match="weights"):  # 'auto' would silently train from random weights
        make_config("proxynca++", "paper", dataset="cub", data_root="/data")
    with pytest.raises(ConfigError, match="data_root"):
        make_config("proxynca++", "paper", dataset="cub", weights=None)
    c = make_config("proxynca++", "paper", **parse_overrides(["dataset=cub", "data_root=/d", "weights=/w/r50.pth"]))
    assert c.weights == "/w/r50.pth"  # a path is only opened when the model is built
    with pytest.raises(ConfigError, match="ci, default, full, converged, paper"):
        make_config("proxynca++", "huge")


def test_recall_ks_cover_the_papers_numbers():
    from pnca_utils.paper import PROXYNCA_PP

    assert set(RECALL_KS) == set(DATA_PRESETS)
    for (dataset, dim), numbers in PROXYNCA_PP.items():
        assert dim in PAPER_DIMS
        assert {f"R@{k}" for k in RECALL_KS[dataset]} >= set(numbers)


def test_amp_is_a_boolean_switch():
    assert make_config("proxynca++", "ci").amp is False
    assert make_config("proxynca++", "ci", **parse_overrides(["amp=true"])).amp is True
    with pytest.raises(ConfigError, match="amp"):
        make_config("proxynca++", "ci", amp="yes")

"""Model identities and `resolve`: which router profile stands for a model, and why."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from router_models import Router, load_router, save_router
from router_models.identity import (
    DATA_BACKED,
    PRIOR_PREFIX,
    SOURCES,
    canonical,
    display_form,
    identify,
    install,
    load_catalog,
    loose_key,
    resolve,
    resolve_all,
)
from router_models.lexical import LexicalFeaturizer
from tests.support import router_cli

ROOT = Path(__file__).resolve().parent.parent

ALIASES = {
    "openai/gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "gpt-4o-mini-2024-07-18": "gpt-4o-mini-2024-07-18",
    "gpt-4o": "gpt-4o-2024-08-06",
    "openai/gpt-4o": "gpt-4o-2024-08-06",
    "gpt-4o-2024-05-13": "gpt-4o-2024-05-13",
    "gpt-4-turbo": "gpt-4-turbo-2024-04-09",
    "gpt4_1106_preview": "gpt-4-1106-preview",
    "gpt-4-1106-preview": "gpt-4-1106-preview",
    "gpt-4": "gpt-4-0613",
    "gpt4_0314": "gpt-4-0314",
    "gpt-3.5-turbo": "gpt-3.5-turbo-0125",
    "anthropic/claude-3-5-sonnet-20240620": "claude-3-5-sonnet-20240620",
    "claude-3.5-sonnet": "claude-3-5-sonnet-20240620",
    "claude-3-5-sonnet": "claude-3-5-sonnet-20240620",
    "anthropic/claude-3.5-sonnet": "claude-3-5-sonnet-20240620",
    "claude-3-5-sonnet-latest": "claude-3-5-sonnet-20241022",  # Anthropic moved -latest
    "anthropic.claude-3-haiku-20240307-v1:0": "claude-3-haiku-20240307",
    "claude-3-opus": "claude-3-opus-20240229",
    "meta-llama/Llama-3.1-8B-Instruct": "llama-3.1-8b-instruct",
    "meta-llama/Meta-Llama-3.1-8B-Instruct": "llama-3.1-8b-instruct",
    "Meta-Llama-3.1-8B-Instruct": "llama-3.1-8b-instruct",
    "Meta-Llama-3_1-8B-Instruct": "llama-3.1-8b-instruct",
    "llama3.1:8b": "llama-3.1-8b-instruct",
    "llama3.1:8b-instruct-q4_K_M": "llama-3.1-8b-instruct",
    "llama3.1:70b": "llama-3.1-70b-instruct",
    "meta-llama/Llama-3.1-70B-Instruct": "llama-3.1-70b-instruct",
    "mistralai/Mixtral-8x7B-Instruct-v0.1": "mixtral-8x7b-instruct-v0.1",
    "mixtral:8x7b": "mixtral-8x7b-instruct-v0.1",
    "Qwen/Qwen2.5-72B-Instruct": "qwen2.5-72b-instruct",
    "qwen2.5:7b": "qwen2.5-7b-instruct",
    "Qwen/Qwen2.5-7B-Instruct": "qwen2.5-7b-instruct",
    "google/gemini-1.5-pro": "gemini-1.5-pro",
    "gemini-1.5-flash": "gemini-1.5-flash",
    "gemma2:9b": "gemma-2-9b-it",
    "gemma2": "gemma-2-9b-it",  # a bare Ollama name is its :latest tag
    "llama3.1": "llama-3.1-8b-instruct",
    "ollama/llama3.1:latest": "llama-3.1-8b-instruct",
    "mistral": "mistral-7b-instruct-v0.3",
    "mistral:7b": "mistral-7b-instruct-v0.3",
    "gemma:latest": "gemma-7b-it",
    "bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0": "claude-3-5-sonnet-20240620",
    "together_ai/meta-llama/Meta-Llama-3.1-70B-Instruct-Turbo": "llama-3.1-70b-instruct",
    "google/gemma-2-9b-it": "gemma-2-9b-it",
    "gemma-2b-it": "gemma-2b-it",
    "lmsys/vicuna-13b-v1.5": "vicuna-13b-v1.5",
    "humpback-llama2-70b": "humpback-llama2-70b",
    "Llama-2-70b-chat-hf": "llama-2-70b-chat",
}


@pytest.fixture(scope="module")
def artifact() -> Router:
    return load_router()


@pytest.mark.parametrize(("name", "expected"), sorted(ALIASES.items()))
def test_aliases_have_one_canonical_identity(name: str, expected: str) -> None:
    assert canonical(name) == expected


def test_names_are_normalised_not_listed() -> None:
    # provider prefixes, quantization tags and serving suffixes go; Ollama tags keep a colon,
    # so `llama3.1:8b` (the instruct model) never matches a base model `Llama-3.1-8B`
    assert display_form("together/meta-llama/Meta-Llama-3.1-70B-Instruct") == (
        "llama-3.1-70b-instruct"
    )
    assert display_form("dbrx-instruct@together") == "dbrx-instruct"
    assert loose_key("llama3.1:8b") != loose_key("meta-llama/Llama-3.1-8B")
    assert canonical("meta-llama/Llama-3.1-8B") == "llama-3.1-8b"
    # an unknown dated snapshot keeps its family and date
    ident = identify("gpt-4o-2025-01-31")
    assert (ident.id, ident.family, ident.date) == ("gpt-4o-2025-01-31", "gpt-4o", "2025-01-31")
    assert identify("claude-3-5-sonnet-20241022").date == "2024-10-22"


def test_catalog_is_consistent() -> None:
    cat = load_catalog()
    doc = json.loads(Path(cat.path).read_text())
    assert doc["provenance"] and doc["families"] and doc["models"]
    for name, fam in cat.families.items():
        if fam.default is not None:
            assert fam.default in cat.models, name
            assert cat.models[fam.default].family == name
    owners: dict[str, str] = {}
    for mid, e in cat.models.items():
        for n in (mid, *e.aliases):
            assert owners.setdefault(loose_key(n), mid) == mid, f"{n} names two models"
    for name, fam in cat.families.items():
        for n in (name, *fam.aliases):
            assert loose_key(n) not in owners, f"family alias {n} is also a model"
    # every snapshot the brief names carries a date and its family
    for mid in ("gpt-4o-2024-08-06", "gpt-4o-mini-2024-07-18", "claude-3-5-sonnet-20240620"):
        assert cat.models[mid].date and cat.models[mid].family


# -- the shipped artifact -----------------------------------------------------------------------

NEVER_DEFAULT = [
    "gpt-4-1106-preview",
    "mistralai/Mixtral-8x7B-Instruct-v0.1",
    "gpt-4o-2024-08-06",
    "claude-3-5-sonnet-20240620",
    "gpt-4o",
    "openai/gpt-4o-mini",
    "claude-3.5-sonnet",
    "google/gemini-1.5-pro",
    "Qwen/Qwen2.5-72B-Instruct",
    "llama3.1:70b",
]


@pytest.mark.parametrize("name", NEVER_DEFAULT)
def test_known_models_never_get_the_default_profile(artifact: Router, name: str) -> None:
    res = resolve(name, artifact)
    assert res.source in SOURCES and res.source != "default", res
    assert res.real
    if res.source == "prior":
        assert res.profile.startswith(PRIOR_PREFIX) and "PRIOR" in res.detail
        assert res.vector is not None and len(res.vector) == artifact.abilities.shape[1]
    else:
        assert artifact.has_profile(res.profile)


def test_data_profiles_are_found_under_any_spelling(artifact: Router) -> None:
    for name in ("llama3.1:8b", "meta-llama/Llama-3.1-8B-Instruct", "Meta-Llama-3_1-8B-Instruct"):
        res = resolve(name, artifact)
        if artifact.has_profile("llama-3.1-8b-instruct"):
            assert (res.source, res.profile) == ("data", "llama-3.1-8b-instruct"), res
    for name, prof in (("qwen2.5:7b", "qwen2.5-7b-instruct"), ("gemma2:9b", "gemma-2-9b-it")):
        if artifact.has_profile(prof):
            assert (resolve(name, artifact).source, resolve(name, artifact).profile) == (
                "data",
                prof,
            )
    for prof in artifact.profiles:  # every profile resolves to itself
        res = resolve(prof, artifact)
        assert (res.source, res.profile) == ("data", prof)


def test_a_made_up_name_gets_the_default_and_says_so(artifact: Router) -> None:
    res = resolve("zorblax-ultra-preview", artifact)
    assert res.source == "default" and not res.real and not res.data_backed
    assert res.profile == artifact.default_weak
    assert "DEFAULT" in res.detail and "not a profile of this model" in res.detail
    assert install(artifact, res) == artifact.default_weak


def test_resolution_does_not_depend_on_order_or_on_installed_priors(artifact: Router) -> None:
    names = [*NEVER_DEFAULT, "llama3.1:8b", "zorblax", "gpt-3.5-turbo", "gemma-2b-it"]
    fresh = load_router()
    first = resolve_all(names, fresh)
    for res in first.values():
        install(fresh, res)  # priors in the router must not become anchors
    again = resolve_all(list(reversed(names)), fresh)
    assert first == again
    for n in names:
        a, b = first[n], again[n]
        assert (a.vector, a.bias) == (b.vector, b.bias)
    # nor on the order of the artifact's profiles
    base = load_router()
    perm = sorted(range(len(base.profiles)), key=lambda i: base.profiles[i][::-1])
    shuffled = Router(
        base.featurizer,
        base.projection,
        base.abilities[perm],
        base.biases[perm],
        [base.profiles[i] for i in perm],
        base.default_strong,
        base.default_weak,
        base.version,
        base.meta,
    )
    assert resolve_all(names, shuffled) == first


def test_different_models_never_predict_bit_identically(artifact: Router) -> None:
    router = load_router()
    names = [*NEVER_DEFAULT, "claude-3-opus", "gpt-4-turbo", "gpt-4", "acme/frob-13b-chat"]
    res = resolve_all(names, router)
    profiles = sorted({install(router, r) for r in res.values()})
    raw = router.score(
        [{"role": "user", "content": "Prove that there are infinitely many primes."}]
    )
    rows = {p: raw.raw[router.profiles.index(p)] for p in profiles}
    assert len(set(rows.values())) == len(profiles), rows
    # the same canonical model under two spellings shares one profile
    assert res["gpt-4o"].profile == res["gpt-4o-2024-08-06"].profile


def test_install_puts_a_prior_into_the_router(artifact: Router) -> None:
    router = load_router()
    # a model with a leaderboard rating and no scored data in any shipped source
    res = resolve("command-r-plus", router)
    assert res.source == "prior", res
    n = len(router.profiles)
    name = res.install(router)
    assert name == res.profile and router.has_profile(name) and len(router.profiles) == n + 1
    assert res.install(router) == name and len(router.profiles) == n + 1  # idempotent
    v, b = router.profile_vector(name)
    assert tuple(v) == res.vector and b == res.bias
    z = router.score([{"role": "user", "content": "Write a sonnet about tolls."}])
    (q,) = router.quality(z, [name])
    assert 0.0 < q < 1.0


# -- sources on a small router whose profiles are chosen by the test ---------------------------


def _router(profiles: list[str], meta: dict[str, object] | None = None) -> Router:
    feat = LexicalFeaturizer(bits=4)
    rng = np.random.default_rng(7)
    k = 3
    return Router(
        feat,
        rng.normal(size=(feat.dim, k)).astype(np.float32),
        rng.normal(size=(len(profiles), k)),
        np.linspace(0.2, 0.8, len(profiles)),
        profiles,
        profiles[-1],
        profiles[0],
        "test",
        meta,
    )


# in order of AlpacaEval 2 LC win rate (5.4, 6.3, 10.5, 19.3, 25.3): `_router` gives them rising
# biases
ANCHORS = ["gemma-2b-it", "vicuna-7b", "vicuna-13b-v1.5", "gpt-3.5-turbo-1106", "claude-2.1"]


def test_every_source_on_a_chosen_router() -> None:
    r = _router([*ANCHORS, "gpt-4o-2024-05-13", "mistral-7b-instruct-v0.3"])
    cases = {
        "gpt-4o-2024-05-13": ("data", "gpt-4o-2024-05-13"),
        "openai/gpt-4o-2024-05-13": ("data", "gpt-4o-2024-05-13"),
        "mistral-7b-instruct": ("snapshot", "mistral-7b-instruct-v0.3"),
        # the default snapshot has no data: the nearest dated one of its family does
        "gpt-4o": ("nearest-snapshot", "gpt-4o-2024-05-13"),
        "gpt-4o-2024-11-20": ("nearest-snapshot", "gpt-4o-2024-05-13"),
        "gpt-3.5-turbo-0125": ("nearest-snapshot", "gpt-3.5-turbo-1106"),
        "claude-3.5-sonnet": ("prior", "prior:claude-3-5-sonnet-20240620"),
        "mixtral:8x7b": ("prior", "prior:mixtral-8x7b-instruct-v0.1"),
        "made-up-thing": ("default", "gemma-2b-it"),
    }
    for name, (source, profile) in cases.items():
        res = resolve(name, r)
        assert (res.source, res.profile) == (source, profile), res
        assert res.data_backed == (source in DATA_BACKED)
    near = resolve("gpt-4o", r)
    assert "nearest dated snapshot" in near.detail and near.canonical == "gpt-4o-2024-08-06"
    prior = resolve("claude-3.5-sonnet", r)
    assert "AlpacaEval 2 LC" in prior.detail and "among 7 profiles" in prior.detail


def test_a_prior_is_placed_by_rating_between_its_neighbours() -> None:
    r = _router(ANCHORS)
    # mixtral-8x7b-instruct-v0.1 (AE2 LC 23.7) lies between vicuna-13b-v1.5 (10.5) and
    # claude-2.1 (25.3): its bias is within the anchors' range, near claude-2.1's
    res = resolve("mixtral-8x7b-instruct-v0.1", r)
    assert res.source == "prior" and res.bias is not None
    assert float(r.biases.min()) <= res.bias <= float(r.biases.max())
    weak = resolve("chatglm2-6b", r)  # AE2 LC 4.4, below every anchor
    strong = resolve("gpt-4-turbo", r)  # AE2 LC 55, far above: read compressed, still above
    assert weak.source == strong.source == "prior"
    assert weak.bias is not None and strong.bias is not None and weak.bias < res.bias < strong.bias


def test_a_rating_on_another_leaderboard_is_bridged() -> None:
    r = _router(ANCHORS)  # anchors rated on AlpacaEval only; gemini-1.5-pro only on Arena/WB
    res = resolve("google/gemini-1.5-pro", r)
    assert res.source == "prior" and "read as AlpacaEval 2 LC win rate" in res.detail, res
    # beyond the anchors a rating is compressed, not cut: the order of two models is kept
    top, less = resolve("gpt-4o-2024-05-13", r), resolve("gpt-4-1106-preview", r)  # 57.5 > 50
    assert top.bias is not None and less.bias is not None and top.bias > less.bias


def test_size_then_price_when_no_rating() -> None:
    r = _router(["gemma-2b-it", "vicuna-13b-v1.5", "humpback-llama2-70b", "qwen2.5-7b-instruct"])
    res = resolve("acme/frobnicator-30b-chat", r)
    assert res.source == "prior" and "parameter count 30B" in res.detail, res
    assert resolve("made-up", r).source == "default"


def test_profile_metadata_groups_anchors_by_dataset() -> None:
    profiles = [*ANCHORS, "llama-3.1-8b-instruct"]
    meta = {
        "profile_meta": {
            **{p: {"datasets": ["alpaca_eval"], "n_prompts": 640} for p in ANCHORS},
            "llama-3.1-8b-instruct": {"datasets": ["crux"], "n_prompts": 800},
        }
    }
    r = _router(profiles, meta)
    assert "(fitted on alpaca_eval, 640 scored prompts)" in resolve("vicuna-7b", r).detail
    res = resolve("mixtral:8x7b", r)
    assert "fitted on alpaca_eval" in res.detail and "llama-3.1-8b" not in res.detail


# -- `tollgate router eval` ----------------------------------------------------------------------


def test_router_eval_prints_sources_and_strict_refuses(tmp_path: Path) -> None:
    bench = tmp_path / "bench.jsonl"
    with open(bench, "w") as f:
        for i in range(12):
            scores = {"gpt-4o": 1.0, "llama3.1:8b": float(i % 2), "zorblax": 0.0}
            f.write(json.dumps({"id": f"p{i}", "prompt": "x" * (i + 1), "scores": scores}) + "\n")
    res = router_cli(
        "eval", "--bench", str(bench), "--strong", "gpt-4o", "--weak", "llama3.1:8b",
        "--out", str(tmp_path / "o"),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("profile:")]
    assert len(lines) == 2
    assert any(ln.startswith("profile: gpt-4o -> ") and "(source " in ln for ln in lines)
    assert "profile: llama3.1:8b -> llama-3.1-8b-instruct (source data:" in res.stdout
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["profiles"]["llama3.1:8b"] == "llama-3.1-8b-instruct"

    res = router_cli(
        "eval", "--bench", str(bench), "--models", "gpt-4o,llama3.1:8b,zorblax",
        "--costs", "gpt-4o=10,llama3.1:8b=0.2,zorblax=1", "--out", str(tmp_path / "m"),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    weak = load_router("default").default_weak  # the shared default, not zorblax's own
    assert f"profile: zorblax -> {weak} (source default: NO PROFILE" in res.stdout

    strict = router_cli(
        "eval", "--bench", str(bench), "--strong", "zorblax", "--weak", "llama3.1:8b",
        "--strict", "--out", str(tmp_path / "s"),
    )  # fmt: skip
    assert strict.returncode != 0
    assert "--strict" in strict.stderr and "zorblax: default" in strict.stderr
    assert not (tmp_path / "s" / "report.json").exists()
    ok = router_cli(
        "eval", "--bench", str(bench), "--strong", "llama3.1:8b", "--weak", "zorblax",
        "--profile", "zorblax=gemma-2b-it", "--strict", "--out", str(tmp_path / "k"),
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr


def test_strict_refuses_a_prior(tmp_path: Path) -> None:
    router = _router([*ANCHORS, "gpt-4o-2024-05-13"])
    art = save_router(router, tmp_path / "r", "# test\n")
    bench = tmp_path / "b.jsonl"
    bench.write_text(
        "\n".join(
            json.dumps({"id": i, "prompt": "y" * (i + 1), "scores": {"A": 1, "B": 0}})
            for i in range(4)
        )
        .replace('"A"', '"gpt-4o-2024-05-13"')
        .replace('"B"', '"claude-3.5-sonnet"')
        + "\n"
    )
    args = ["eval", "--bench", str(bench), "--strong", "gpt-4o-2024-05-13"]
    args += ["--weak", "claude-3.5-sonnet", "--router", str(art), "--out", str(tmp_path / "o")]
    res = router_cli(*args)
    assert res.returncode == 0, res.stderr
    assert "claude-3.5-sonnet -> prior:claude-3-5-sonnet-20240620 (source prior:" in res.stdout
    refused = router_cli(*args, "--strict")
    assert refused.returncode != 0 and "claude-3.5-sonnet: prior" in refused.stderr


# the retrained artifact's profiles are canonical identities, with per-profile metadata
NEW_PROFILES = [
    "gemma-2b-it", "vicuna-13b-v1.5", "humpback-llama2-70b", "gpt-3.5-turbo-1106",
    "llama-3.1-8b-instruct", "llama-3.1-70b-instruct", "mixtral-8x7b-instruct-v0.1",
    "gpt-4o-2024-08-06", "gpt-4o-2024-05-13", "gpt-4o-mini-2024-07-18",
    "claude-3-5-sonnet-20240620", "claude-3-haiku-20240307", "claude-3-opus-20240229",
    "gpt-4-1106-preview", "gpt-4-turbo-2024-04-09", "gpt-4-0314", "gpt-3.5-turbo-0125",
    "qwen2.5-72b-instruct", "qwen2.5-7b-instruct", "gemini-1.5-pro", "gemini-1.5-flash",
    "gemma-2-9b-it",
]  # fmt: skip


def test_the_retrained_artifacts_canonical_profiles_are_data() -> None:
    meta = {"profile_meta": {p: {"datasets": ["crux"], "n_prompts": 800} for p in NEW_PROFILES}}
    r = _router(NEW_PROFILES, meta)
    for name in NEVER_DEFAULT:
        assert resolve(name, r).source in DATA_BACKED, resolve(name, r)
    for name, expected in ALIASES.items():
        res = resolve(name, r)
        if expected in NEW_PROFILES:
            assert res.profile == expected and res.source in DATA_BACKED, res
    assert resolve("gpt-4o", r).source == "snapshot"
    assert resolve("meta-llama/Llama-3.1-8B-Instruct", r).detail.endswith(
        "(fitted on crux, 800 scored prompts)"
    )
    late = resolve("claude-3-5-sonnet-latest", r)  # 20241022: no data, its sibling has
    assert (late.source, late.profile) == ("nearest-snapshot", "claude-3-5-sonnet-20240620")
    assert resolve("gpt-4o-2024-11-20", r).profile == "gpt-4o-2024-08-06"
    assert resolve("gpt-4-0613", r).profile == "gpt-4-0314"
    assert resolve("claude-3-sonnet", r).source == "prior"


def test_a_joint_artifact_places_priors_on_all_profiles() -> None:
    # a logistic-link (joint item-response) artifact has one scale: no dataset groups
    profiles = [*ANCHORS, "llama-3.1-8b-instruct", "mistral-7b-instruct-v0.3"]
    datasets = {p: {"datasets": ["alpaca_eval"]} for p in ANCHORS}
    datasets["llama-3.1-8b-instruct"] = datasets["mistral-7b-instruct-v0.3"] = {
        "datasets": ["dcrouter"]
    }
    per_profile = resolve("mixtral:8x7b", _router(profiles, {"profile_meta": datasets}))
    assert "among 5 profiles fitted on alpaca_eval" in per_profile.detail
    joint = _router(profiles, {"profile_meta": datasets, "link": "logistic"})
    res = resolve("mixtral:8x7b", joint)
    assert "among 7 profiles by" in res.detail, res


def test_names_outside_the_catalog_match_profiles_by_loose_key() -> None:
    r = _router([*ANCHORS, "llama-3.1-8b", "acme-widget-2-13b-chat"])
    for name in ("Meta-Llama-3_1-8B", "meta-llama/Llama-3.1-8B", "llama-3.1-8b"):
        assert (resolve(name, r).source, resolve(name, r).profile) == ("data", "llama-3.1-8b")
    assert resolve("Acme/Acme_Widget_2-13B-Chat", r).profile == "acme-widget-2-13b-chat"
    assert canonical("Meta-Llama-3_1-8B") == "llama-3.1-8b"


def test_the_data_names_table_agrees_with_the_catalog() -> None:
    # router_models/data/names.json (the training data's name -> canonical identity table, on
    # the retraining branch): every data name must mean the same model as its canonical name
    path = ROOT / "router_models" / "data" / "names.json"
    if not path.is_file():
        pytest.skip("no router_models/data/names.json in this checkout")
    table = json.loads(path.read_text())["aliases"]
    bad = {d: c for d, c in table.items() if identify(d).id != identify(c).id}
    assert not bad

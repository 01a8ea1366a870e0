"""The shipped artifact from a joint fit: Router arrays, per-profile metadata, the model card."""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from router_models.data import SOURCES
from router_models.joint import JointConfig
from router_models.lexical import LexicalFeaturizer
from router_models.loso import POLICY, Data, Fitted
from router_models.model import Router

DEFAULT_STRONG = "gpt-4-1106-preview"
DEFAULT_WEAK = "mixtral-8x7b-instruct-v0.1"


def router_from_fit(fitted: Fitted, data: Data, sources: list[str], cfg: JointConfig) -> Router:
    """Router arrays: projection W, abilities a + b_m g + u_m, biases b_m + mean source offset."""
    irt = fitted.irt
    profile_meta: dict[str, Any] = {}
    for m in irt.models:
        names = {
            s: data.mats[s].data_names[m]  # type: ignore[index]
            for s in sources
            if data.mats[s].data_names and m in data.mats[s].data_names  # type: ignore[operator]
        }
        profile_meta[m] = {
            "sources": irt.n_scores[m],
            "scored_prompts": int(sum(irt.n_scores[m].values())),
            "data_names": names,
        }
    meta = {
        "link": "logistic",
        "source_offsets": dict(zip(irt.sources, map(float, irt.c), strict=True)),
        "profile_meta": profile_meta,
    }
    strong = DEFAULT_STRONG if DEFAULT_STRONG in irt.models else irt.models[int(np.argmax(irt.b))]
    weak = DEFAULT_WEAK if DEFAULT_WEAK in irt.models else irt.models[int(np.argmin(irt.b))]
    return Router(
        LexicalFeaturizer(),
        fitted.projection.astype(np.float32),
        irt.abilities(),
        irt.b + float(np.mean(irt.c)),
        list(irt.models),
        strong,
        weak,
        "dev",
        meta,
    )


def _apgr_table(rows: list[dict[str, Any]]) -> str:
    out = [
        "| source | kind | pair | strong vs weak | n | APGR | random |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['source']} | {r['kind']} | {r['pair']} | {r['strong']} vs {r['weak']} | "
            f"{r['n']} | {r['apgr']:.3f} | {r['random_apgr']:.3f} |"
        )
    return "\n".join(out)


def _many_table(rows: list[dict[str, Any]]) -> str:
    out = [
        "| source | policy | priced models | n | target | router cost share [90% CI] | "
        "random-mix frontier [90% CI] | router / frontier [90% CI] |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mm in rows:
        for t in ("95", "97", "99"):
            r, f, q = mm["router"][t], mm["frontier"][t], mm["ratio"][t]
            pol = mm.get("policy", POLICY) + (" (chosen)" if mm.get("policy") == POLICY else "")
            out.append(
                f"| {mm['source']} | {pol} | {len(mm['models'])} | {mm['n']} | {t}% | "
                f"{r['cost_share']:.3f} [{r['ci90'][0]:.3f}, {r['ci90'][1]:.3f}] | "
                f"{f['cost_share']:.3f} [{f['ci90'][0]:.3f}, {f['ci90'][1]:.3f}] | "
                f"{q['value']:.2f} [{q['ci90'][0]:.2f}, {q['ci90'][1]:.2f}] |"
            )
    return "\n".join(out)


def _summary(res: dict[str, Any]) -> str:
    """Per source: the worst and mean APGR of the transfer pairs, ratio at 97%."""
    lines = []
    for s in SOURCES:
        tr = [r["apgr"] for r in res["apgr"] if r["source"] == s and r["kind"] == "transfer"]
        mm = [x for x in res["many_model"] if x["source"] == s and x.get("policy") == POLICY]
        ratio = f"{mm[0]['ratio']['97']['value']:.2f}" if mm else "-"
        if tr:
            lines.append(f"| {s} | {len(tr)} | {min(tr):.3f} | {np.mean(tr):.3f} | {ratio} |")
        else:
            lines.append(f"| {s} | 0 | - | - | {ratio} |")
    return (
        f"| source | transfer pairs | min APGR | mean APGR | cost ratio at 97% ({POLICY}) |\n"
        "|---|---|---|---|---|\n" + "\n".join(lines)
    )


# The configurations compared while choosing this one (2026-12-07, by hand with
# router_models.loso.evaluate; not re-run by `router train`). LOSO = mean APGR of the prompt-
# transfer pairs per source (dcrouter / crux / math / mmlu_pro; AlpacaEval has none);
# in-source = router / random-mix frontier cost at 97% on the held-out splits (alpaca_eval,
# dcrouter, crux, math, mmlu_pro), policy "both" unless marked (u = utility only).
CONFIGS_TRIED = """\
| rank, alpha, lambda_u, struct, offsets | LOSO transfer APGR | in-source ratio at 97% |
|---|---|---|
| 48, 3, 30, 1, free | 0.58 / 0.49 / 0.39 / 0.53 | u: 1.00 / 0.41 / 0.89 / 0.98 / 1.00 |
| 48, 3, 3000, 1, free | 0.85 / 0.48 / 0.44 / 0.48 | u: 0.96 / 0.35 / 1.00 / 0.80 / 0.99 |
| 48, 3, 3000, 10, free | 0.80 / 0.50 / 0.47 / 0.48 | - |
| **48, 3, 3000, 10, 0 (shipped)** | 0.01 / 0.49 / 0.41 / 0.48 | 0.97/0.24/0.96/0.95/0.81 |
| 48, 3, 3000, 1, 0 | 0.46 / 0.50 / 0.47 / 0.48 | 0.98 / 0.23 / 1.00 / 0.92 / 0.83 |
| 32, 3, 3000, 1, 0 | 0.36 / 0.50 / 0.48 / 0.50 | 0.99 / 0.24 / 1.00 / 0.95 / 0.87 |
| 16, 3, 3000, 1, 0 | 0.30 / 0.53 / 0.49 / 0.50 | 1.00 / 0.39 / 1.00 / 0.97 / 1.00 |
| 16, 3, 3000, 10, 0 | 0.19 / 0.54 / 0.48 / 0.48 | - |
| 16, 3, 30, 10, 0 | 0.07 / 0.53 / 0.44 / 0.48 | - |
| 8, 3, 3000, 10, 0 | 0.26 / 0.54 / 0.49 / 0.47 | - |
| 48, 30, 3000, 10, 0 | 0.02 / 0.49 / 0.47 / 0.50 | - |
| shipped + comparisons, length | 0.07 / 0.48 / 0.43 / 0.48 | 0.99/0.23/0.79/0.95/0.79 |
| shipped + comparisons | - | 0.99/0.24/0.79/0.96/0.79 |

Every configuration is at chance on leave-one-source-out for crux, math and mmlu_pro (0.44 to
0.54); dcrouter's single transfer pair (llama-3.1-8b-instruct vs gemma-2-9b-it, 2.6 points
apart) swings from 0.01 to 0.85 between configurations that rank prompts almost alike, i.e.
it is noise. LOSO could therefore not choose, and the rule fixed before the last four runs
(fixed before the last two runs, rank 32 and 48 with struct 1): the best LOSO mean among the
configurations that meet the in-source many-model acceptance on every source; only the
shipped one does. Source offsets "free" leave the
quality scale per source unknown at inference (predictions 0.2-0.3 too high on AlpacaEval),
"0" (held at 0) makes z . a carry the level of each kind of prompt.

The last two rows (2026-12-08, `--pairwise-reference [--length-control]`) fit AlpacaEval's win
probabilities as comparisons with the gpt4_1106_preview reference, which gives that reference
a prompt profile (the shipped one has none: it is a flat 0.5), and take the judge's taste for
long answers out of the profiles. Leave-one-source-out stays at chance; in-source, crux and
mmlu_pro improve (0.96 -> 0.79, 0.81 -> 0.79) and AlpacaEval gets worse (0.97 -> 0.99). On the
AlpacaEval training prompts of the demo (`scripts/demo_policy_sweep.py`) the shipped artifact
reaches 92% of always-large's judged quality for 16% of its cost, these two 75% for 33% and
80% for 37% (cost weight 300): the shipped artifact's flat reference and length-driven chat
profile fit this judge. Not shipped: nothing measured says they transfer better, and the
demo's judge prefers the shipped one. Held-out demo numbers were not used to choose.
"""


def model_card(router: Router, metrics: dict[str, Any], args: argparse.Namespace) -> str:
    meta = router.meta
    hp = meta.get("hyperparameters", {})
    n_scored = {p: m["scored_prompts"] for p, m in meta["profile_meta"].items()}
    multi = [p for p, m in meta["profile_meta"].items() if len(m["sources"]) > 1]
    sections = []
    for key, title in (("heldout", "In-source held-out split"), ("loso", "Leave-one-source-out")):
        if key not in metrics:
            continue
        res = metrics[key]
        sections.append(
            f"### {title}\n\n{_summary(res)}\n\n#### Two-model APGR\n\n{_apgr_table(res['apgr'])}"
            f"\n\n#### Many-model cost at 95/97/99% of the best single model's quality "
            f"(share of the best model's cost)\n\n{_many_table(res['many_model'])}\n"
        )
    flags = " ".join(
        f"--{k.replace('_', '-')} {hp[k]:g}"
        for k in ("rank", "ridge_alpha", "lam_u", "lam_g", "lam_c", "struct_scale", "max_iter")
        if k in hp
    ) + "".join(
        f" --{k.replace('_', '-')}" for k in ("pairwise_reference", "length_control") if hp.get(k)
    )
    data = ",".join(meta.get("trained_on", SOURCES))
    defaults = {k: v for k, v in vars(JointConfig()).items() if k != "source_weight"}
    how = (
        "all defaults; `make router-artifact`"
        if all(hp.get(k, v) == v for k, v in defaults.items()) and data == ",".join(SOURCES)
        else "not the defaults"
    )
    return f"""# Router model card: {router.version}

- Created: {meta["created"]} by `tollgate router train --data {data} {flags} --loso --out
  {getattr(args, "out", "DIR")}` ({how})
  in {meta.get("train_seconds", 0):.0f} s on this machine's 2 cores, evaluation included;
  deterministic (the same weights on every run).
- Featurizer: `lexical` (hashed byte 3/4/5-grams and word 1/2-grams + 16 structure features,
  the C pass in `_lexical.c`), {router.featurizer.dim} features.
- Model (`router_models/joint.py`): stage 1, one dual ridge per (source, model) score column on
  the sparse features (alpha {hp.get("ridge_alpha")}), the per-source coefficient blocks
  scaled to equal norm and factored by SVD to rank {router.projection.shape[1]}: the prompt
  vector z = x @ W (float16), each coordinate unit variance on the training prompts. Stage 2,
  a joint two-parameter item-response model over every (prompt, model) score of all sources,
  one profile per canonical model identity: logit P(good answer) = b_m + z.a + b_m (z.g) +
  z.u_m + c_source (lambda_u {hp.get("lam_u")}, lambda_g {hp.get("lam_g")}), fitted by L-BFGS
  with each source weighted equally. In the artifact: abilities = a + b_m g + u_m, bias = b_m
  + the mean source offset; `Router.quality` = logistic(z . v_m + b_m) (format 2, `"link":
  "logistic"`); `strong_score` = (1 + quality gap) / 2.
- Profiles ({len(router.profiles)}), keyed by canonical identity
  (`router_models/data/names.json`); `profile_meta` in router.json gives each one's sources,
  number of scored prompts and the data names merged into it. {len(multi)} profiles are
  fitted on more than one source: {", ".join(sorted(multi))}.
- Default strong / weak profile (for models without a profile): {router.default_strong} /
  {router.default_weak}.
- Training split: every source's prompts whose sha256 % 100 >= 20; the held-out split (the
  rest) is never trained on, so the 162 held-out AlpacaEval prompts of `tollgate demo
  --heldout-only` are unseen.

## Data and licences
- AlpacaEval 2 annotations, tatsu-lab/alpaca_eval@cd543a149df89434d8a54582c0151c0b945c3d20:
  data **CC BY-NC 4.0** (code Apache-2.0); answers by the named models. This artifact is
  trained on it, so it is a derived work under the same non-commercial licence: free for
  research and evaluation with attribution, **not for commercial use** (a commercial user
  must retrain without `alpaca_eval`: `tollgate router train --data
  dcrouter,zeroeval_crux,zeroeval_math,mmlu_pro --out DIR`, and loses the AlpacaEval-only
  profiles such as gpt-4-1106-preview). The gpt4_1106_preview reference is given the score
  0.5 on every prompt (it ties itself), which is its data-backed profile.
  `Mixtral-8x7B-Instruct-v0.1_concise` (Mixtral told to be concise) is used as Mixtral's
  AlpacaEval data: the only chat judgment of Mixtral in the data; its win rate is below what
  plain Mixtral would get, the prompt-to-prompt pattern is what the router uses.
- LLMRouter correctness matrix, ulab-uiuc/LLMRouter@4e7a796942ce26e9d5f2b93191c7c2585c99c2e3,
  MIT. Contains test items of public benchmarks (MMLU, GSM8K, ...).
- ZeroEval CRUXEval-O and MATH level-5 (half),
  yuchenlin/ZeroEval@570c6269a2e4930ee06a17e713fece1ba52cf1dd, Apache-2.0.
- MMLU-Pro non-MMLU questions, TIGER-AI-Lab/MMLU-Pro@f418b116db00b065c2aea046518d8fcf74d39872,
  Apache-2.0.
- WildBench WB_Elo (cold-start prior in evaluation only), allenai/WildBench@d6b8dcaf, Apache-2.0;
  prices: RouterArena (Apache-2.0), LLMRouter default_llm.json and documented list prices
  (`router_models/data/prices.json`).
- Not used, not looked at: RouteLLM's evaluation data, MT-Bench, Arena-Hard, GSM8K/MMLU
  held-out benchmark sets.

## Measurement (`router_models/loso.py`; `tollgate router loso`)
APGR as RouteLLM defines it (fraction; random = 0.5 in expectation). Pair kinds: transfer =
both models have a profile fitted on other data; one cold / cold = a model of the tested
source with no data elsewhere, profiled from its WildBench Elo (linear fit of strength on
Elo over fitted models) or the mean strength. Many-model: priced models only, cost per call =
price x (prompt chars / 4 input + answer chars / 4 output tokens; answer lengths recorded for
alpaca_eval and zeroeval, 1,000 chars assumed for dcrouter and mmlu_pro). Policies, from
predicted quality and expected cost (expected answer length = the model's mean on the
source's training prompts): `utility` = argmax predicted quality - lambda x expected cost,
swept over lambda; `anchored` = the model with the highest mean predicted quality unless a
cheaper one is predicted within delta of it on the prompt (then the cheapest such), swept
over delta; `both` = the operating points of the two (the one the summary uses: LOSO could not
tell the two apart and an inner validation split of the training prompts tied them). Router
operating points and single models may be mixed at random, so the router's cost is the lower
convex hull of both; the random-mix frontier is the hull of the single models alone, so a
ratio of 1.00 means the router adds nothing. 90% intervals: {getattr(args, "boot", 200)}
bootstrap draws over prompts (predictions fixed, prompts resampled).

{chr(10).join(sections)}

## Configurations compared

{CONFIGS_TRIED}
## Acceptance, honestly
- Many-model cost at 97% of the best model's quality below the random-mix frontier on every
  source's held-out split: met in point estimate on all five (ratios in the summary above),
  but the 90% intervals of alpaca_eval, zeroeval_crux and zeroeval_math reach 0.99-1.00, and
  the configuration was chosen partly on these splits, so they are optimistic.
- Leave-one-source-out APGR >= 0.55 for the prompt-transfer pairs on every source: **not
  met**. No configuration tried transfers across sources (all at chance, see above); AlpacaEval
  has no transfer pair at all (gpt-4-1106-preview and the old chat models exist only there).
  Leave-one-source-out many-model cost is at the frontier (ratio 0.95-1.00).
- Semantic features measured, not shipped: in the same leave-one-source-out harness the full
  MiniLM sentence embedding (PCA 64, or a learned rank-48 projection) and a static WordPiece
  table distilled from it (30,522 x 64, prompt = weighted mean of token rows), alone or beside
  the lexical features, all stayed at the random-mix frontier (cost ratio at 97% 0.94-1.00)
  with transfer-pair APGR within noise of 0.5; their mean per-model AUC on the held-out source
  was 0.54-0.57 against 0.53 for the lexical features. The failure looks like per-source
  calibration (which model is best on a new kind of prompt), not the prompt representation.
  The static table costs 0.5 ms at 2,000 characters (WordPiece tokenisation), the full model
  40 ms. The gateway has no `anchored` policy.

## Limits
- The in-source held-out rows are slightly optimistic for the shipped configuration (see
  above).
- Pairs of models of near-equal quality on a source (e.g. gemini-1.5-pro vs flash on MATH)
  give unstable APGR: the denominator strong - weak is a few points.
- Held-out prompts come from the same benchmarks as the training prompts; LOSO is the transfer
  estimate. Training conversations are single-turn.
- Scored prompts per profile range from {min(n_scored.values())} to {max(n_scored.values())}.
"""

"""Payoff: the benchmark's FT-CADIS gain on real test images, and one Shirt where it loses.

The images are picked from the shipped result files (apps.ui.payoff's rule); their radii come from those files and
are drawn; the draws and votes beside them are computed live, on the same draws for every classifier shown.
"""

import streamlit as st

from apps.ui import payoff
from apps.ui.hosting import hide_paths
from apps.ui.models import is_custom
from apps.ui.pictures import data_uri, strip, to_uint8
from apps.views._common import bundle, finetuned_classifier, visible_models
from cadis.data import FASHION_MNIST_CLASSES
from cadis.errors import CadisError
from cadis.seeds import derive_seed

st.title("The payoff on real images")
st.markdown(
    "The benchmark's claim, image by image. On the **same noise draws**, the classifier fine-tuned by FT-CADIS "
    "certifies a clearly larger radius than the off-the-shelf one on some test images, and a smaller one on some "
    "shirts. For each image below: the picture, a few noisy draws and what the denoiser makes of them, the votes of "
    "the classifier **alone** (no denoiser), of the off-the-shelf classifier behind the denoiser and of FT-CADIS "
    "behind it, and both certified radii from the benchmark's files, drawn.")

# A re-count small enough to run on every visit (about a second per image on a CPU), and a few draws to show.
LIVE_N0, LIVE_N, SHOWN_DRAWS = 100, 200, 3
NAMES = ("off\u2011the\u2011shelf", "FT\u2011CADIS")  # non-breaking hyphens: a name never wraps mid-word


@st.cache_data(show_spinner=False, max_entries=6)
def _pair(sigma: float) -> payoff.ShippedPair:
    return payoff.load_pair(sigma)


sigmas = payoff.available_sigmas()
if not sigmas:
    st.info(f"No shipped results of both `{payoff.BASELINE}` and `{payoff.TUNED}` at one σ.")
    st.stop()
sigma = st.radio("Noise level σ of the shipped runs", sigmas, index=sigmas.index(0.5) if 0.5 in sigmas else 0,
                 format_func=lambda s: f"σ = {s:g}", horizontal=True, key="pay_sigma")
try:
    pair = _pair(sigma)
except CadisError as e:
    st.error(hide_paths(str(e)))
    st.stop()
classes = list(FASHION_MNIST_CLASSES)
margin = payoff.margin_for(sigma)
gains = payoff.pick_gains(pair.frame, margin)
loss = payoff.pick_loss(pair.frame, classes.index(payoff.LOSER_CLASS))
picks = [("gain", row) for _, row in gains.iterrows()] + ([("loss", loss)] if loss is not None else [])
st.caption(payoff.RULE.format(margin=margin, k=payoff.PICKS, loser=payoff.LOSER_CLASS))
st.caption(f"Radii from the benchmark's files, {pair.source()}")
if not pair.shared:
    st.warning("These two files were not certified on the same noise draws: their radii still compare, but not "
               "draw for draw.")

# The live part: the bundle's denoiser and classifier, the shipped FT-CADIS adapter at this σ.
b = bundle()
tuned_path = visible_models().get(f"{payoff.TUNED}-s{sigma:g}")
live = b.preset.dataset == pair.dataset and tuned_path is not None
if not live:
    st.info("The live re-count needs the "
            + (f"{pair.dataset} test set (choose its preset on the Models page)" if b.preset.dataset != pair.dataset
               else f"shipped `{payoff.TUNED}` adapter at σ = {sigma:g}")
            + "; below, the files' radii only.")
elif is_custom(b.preset):
    st.caption("Live: “off-the-shelf” is the classifier chosen on the Models page, not the one the files certified.")


@st.cache_data(show_spinner=False, max_entries=32)
def _recount(_b, models: tuple, idx: int, sigma: float, alpha: float, seed: int, _tuned) -> payoff.Recount:
    # `models` (preset, denoiser, classifier, adapter and its mtime) keys the cache; the models themselves are not
    # hashed.
    x, label = _b.dataset[idx]
    return payoff.recount(_b, x, int(label), _tuned, sigma, LIVE_N0, LIVE_N, alpha, seed, draws=SHOWN_DRAWS)


counts = {}
if live:
    tuned = finetuned_classifier(tuned_path)
    key = (b.preset.name, b.preset.denoiser, b.preset.classifier, str(tuned_path), tuned_path.stat().st_mtime)
    bar = st.progress(0.0, text="Re-counting the votes live …")
    try:
        for k, (_, row) in enumerate(picks):
            idx = int(row["idx"])
            counts[idx] = _recount(b, key, idx, sigma, pair.alpha, derive_seed(pair.seed, idx), tuned)
            bar.progress((k + 1) / len(picks), text=f"Re-counting the votes live: image {k + 1} of {len(picks)}")
    except CadisError as e:
        st.error(hide_paths(str(e)))
    bar.empty()

if counts:
    total = LIVE_N * len(counts)
    right = {part: sum(int(getattr(counts[int(row["idx"])], part).counts[int(row["label"])])
                       for _, row in picks if int(row["idx"]) in counts) for part in ("alone", "base")}
    st.markdown(f"**Noise breaks the classifier, denoising repairs it**: on these {len(counts)} images, the "
                f"off-the-shelf classifier alone votes for the true class on {right['alone']} of {total} raw noisy "
                f"draws; behind the denoiser, on {right['base']} of the same {total} draws (live, N = {LIVE_N} "
                "per image).")

shown = [c.replace("-", "\u2011") for c in classes]  # non-breaking hyphens: "T-shirt" never wraps mid-word
for kind, row in picks:
    idx, label = int(row["idx"]), int(row["label"])
    with st.container(border=True):
        if kind == "gain":
            head = f"FT-CADIS certifies a radius {row['gain']:.2f} larger"
        else:
            head = f"where FT-CADIS loses: its radius for {shown[label]} is {row['loss']:.2f} smaller"
        st.markdown(f"**#{idx} · {shown[label]}** — {head}")
        left, middle, right_col = st.columns([1, 3, 3])
        if live:
            left.image(to_uint8(b.dataset[idx][0], 4), caption="clean", width=112)
        right_col.plotly_chart(payoff.radius_figure(row, shown, pair.cap, NAMES), key=f"pay_r{idx}",
                               config={"displayModeBar": False})
        right_col.caption(f"From the files, {pair.source()}")
        r = counts.get(idx)
        if r is None:
            continue
        base_draws, tuned_draws = r.shown
        pics = [data_uri(strip([base_draws.noisy[d], base_draws.denoised[d]], 2)) for d in range(len(base_draws.top1))]
        caps = [f"{shown[int(p)]} / {shown[int(q)]}" for p, q in zip(base_draws.top1, tuned_draws.top1)]
        middle.caption(f"Noisy → denoised draws; under each: {NAMES[0]} / {NAMES[1]}")
        middle.image(pics, caption=caps, width=110)
        st.markdown("\n".join([
            f"- **alone, no denoiser**: {payoff.vote_line(r.alone, label, shown)}",
            f"- **{NAMES[0]} + denoiser**: {payoff.vote_line(r.base, label, shown)}",
            f"- **{NAMES[1]} + denoiser**: {payoff.vote_line(r.tuned, label, shown)}"]))
        st.caption(f"Live re-count of the votes: N0 = {r.n0} + N = {r.n} draws, the files' seed for this image "
                   f"({r.seed}); the files used N = {pair.n:,}, so counts and radii differ from theirs.")

with st.expander("Why a larger radius matters, and how it is computed"):
    st.markdown(
        "A certified radius r means: no change of the image smaller than r (in ℓ2 norm, pixels in [0, 1]) can change "
        "the smoothed classifier's answer, with probability at least 1 − α over the noise. It is "
        "R = σ·Φ⁻¹(p_A), where p_A is a lower confidence bound on the top class's share of the N votes; the more "
        "consistent the vote, the larger the radius, up to σ·Φ⁻¹(α^(1/N)) when all N votes agree (the dotted line). "
        "A wrong class or an abstention certifies nothing about the true class.")

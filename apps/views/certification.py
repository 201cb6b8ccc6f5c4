"""Certification: first what the shipped results say (one σ, three runs, sentences computed from the files), then
per-image certified radii with progress, and, one toggle away, certified accuracy vs radius across every run.

Every result names the classifier (and adapter), σ, N and α that produced it; a fine-tuned classifier is certified
together with the off-the-shelf one on the same draws, so the `none` baseline is always there to compare with.
"""

import time
from pathlib import Path

import pandas as pd
import plotly.express as px
import streamlit as st

from apps.ui.certification import (
    DATASET_NAMES,
    FORMULAS,
    MEANING,
    WORDS,
    baselines_for,
    certificate_row,
    certify_many,
    default_pair,
    default_runs,
    is_pairable,
    load_results,
    radius_cap,
    result_files,
    session_results,
    shared_draws,
    shipped_verdict,
)
from apps.ui.headline import (
    COLOURS,
    LEGEND,
    default_sigma,
    headline_files,
    headline_radius,
    headline_sentence,
    load_runs,
    paired_sentence,
    per_class,
)
from apps.ui.hosting import SHIPPED_RESULTS, check_limits, hide_paths, limits, result_roots
from apps.ui.jobs import duration, time_left
from apps.ui.models import OFF_THE_SHELF, finetuned_info
from apps.ui.pictures import to_uint8
from apps.ui.style import VERDICT_COLOURS, colour_map, paint, sigma_of
from apps.views._common import (
    CERTIFY_REQUEST,
    bundle,
    dataset_index,
    finetuned_classifier,
    hosted_note,
    image_picker,
    keep_selection,
    visible_models,
    visitor,
)
from cadis.analysis.tables import (
    DEFAULT_RADII,
    certified_accuracy_figure,
    paired_comparison,
    per_class_accuracy,
    summary_table,
)
from cadis.certification.smoothing import max_radius
from cadis.errors import CadisError

st.title("Certified radii")
st.markdown("A **certified radius** says how far an image may be changed (in ℓ2 distance) before the vote of its "
            "noisy copies could change. " + MEANING)



def _stamp(path: Path) -> tuple[float, int]:
    try:
        st_ = path.stat()
        return st_.st_mtime, st_.st_size
    except OSError:  # gone since it was listed: read_results says so
        return 0.0, 0


@st.cache_data(show_spinner=False, max_entries=16)
def _load_results(stamps: tuple) -> tuple:
    """`load_results`, read again only when a file is added, removed or changed (its mtime and size key the cache):
    the shipped files are many and the same on every rerun."""
    return load_results([Path(p) for p, *_ in stamps])


b = bundle()
hosted_note()
# Certifying brings the session's runs into the comparison of every run; the button is drawn further down, but its
# click is known now, before the toggle that switches views is read.
if st.session_state.get("cert_run"):
    st.session_state["cert_all"] = True
everything = bool(st.session_state.get("cert_all", False))

st.header("What the shipped results say")
shipped_files = headline_files(SHIPPED_RESULTS)
three = {}
if not shipped_files:
    st.info("The shipped results of the three classifiers are missing from experiments/results/.")
else:
    sigmas = list(shipped_files)
    if st.session_state.get("cert_view_sigma") not in sigmas:
        st.session_state["cert_view_sigma"] = default_sigma(sigmas)
    view_sigma = st.radio(WORDS["sigma"][0], sigmas, key="cert_view_sigma", horizontal=True,
                          format_func=lambda s: f"{s:g}", help=WORDS["sigma"][1])
    try:
        three = load_runs(shipped_files[view_sigma])
    except (CadisError, ValueError) as e:  # a damaged file: say which, and keep the rest of the page
        st.warning(hide_paths(f"The shipped results at σ = {view_sigma:g} cannot be read: {e}"))
if three:
    config = three["none"].attrs.get("config", {})
    r_view = headline_radius(view_sigma)
    st.markdown(f"**{headline_sentence(three, r_view)}**")
    data = DATASET_NAMES.get(config.get("dataset"), config.get("dataset", ""))
    st.caption(f"Three classifiers behind the same denoiser, each certified on the same {len(three['none'])} {data} "
               f"{config.get('split', '')} images with N = {config.get('n')} noisy copies and α = "
               f"{config.get('alpha')}: the off-the-shelf one, one fine-tuned on denoised images (cross-entropy), "
               "and one fine-tuned with FT-CADIS. Computed from the result files in experiments/results/.")
    if not everything:
        fig = certified_accuracy_figure({LEGEND[k]: df for k, df in three.items()})
        for trace in fig.data:  # fixed colours: the same three wherever these runs appear
            trace.line.color = COLOURS[trace.name]
        fig.add_vline(x=r_view, line_dash="dot", line_color="grey", annotation_text=f"radius {r_view:g} = σ")
        fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.2, x=0), legend_title="classifier",
                          margin=dict(t=30))  # no title: no empty band above the curves
        st.plotly_chart(fig, key="cert_three")
    st.markdown(paired_sentence(three["ft-cadis.authors-lora"], three["none"], r_view,
                                shared_draws(three["ft-cadis.authors-lora"], three["none"])))
    if not everything:
        # class names from the models only when they certify the data these files hold
        names = b.classes if config.get("dataset") == b.preset.dataset else None
        bars3 = per_class(three, r_view, names)
        st.plotly_chart(px.bar(bars3, x="class", y="certified accuracy", color="run", barmode="group",
                               color_discrete_map=COLOURS, range_y=[0, 1],
                               title=f"Per class, at radius {r_view:g}<br>which classes each one certifies",
                               labels={"run": "classifier"}).update_layout(
                                   legend=dict(orientation="h", yanchor="top", y=-0.3, x=0)),
                        key="cert_three_per_class")
st.toggle("Show every run (for researchers)", key="cert_all",
          help="Every shipped run and the ones certified in this session: ablations, other seeds, other N, the "
               "best-σ envelope, the ACR table, per-class accuracy and paired comparisons of any two runs.")
if everything:
    st.caption("Every run is compared below, after your own certifications.")

st.header("Certify images yourself")
choices = visible_models()
options = [OFF_THE_SHELF, *choices]
request = st.session_state.pop(CERTIFY_REQUEST, None)
if request in options:  # "certify this model" from the Fine-tuning or Models page: its classifier, at its σ
    st.session_state["cert_classifier"] = request
    trained_at = finetuned_info(choices[request])["σ"] if request != OFF_THE_SHELF else None
    if isinstance(trained_at, (int, float)) and trained_at > 0:
        st.session_state["cert_sigma"] = float(trained_at)
if st.session_state.get("cert_classifier") not in options:
    st.session_state.pop("cert_classifier", None)
c1, c2 = st.columns([2, 1], vertical_alignment="bottom")
chosen_clf = c1.selectbox("Classifier", options, key="cert_classifier",
                          format_func=lambda k: k if k == OFF_THE_SHELF else f"fine-tuned: {k}",
                          help="off-the-shelf: the classifier of the Models page (the preset's by default); "
                               "fine-tuned: your runs and the shipped ones.")
baseline = chosen_clf != OFF_THE_SHELF and c2.checkbox(
    "with the off-the-shelf baseline", value=True, key="cert_baseline",
    help="Also certify the off-the-shelf classifier on the same noise draws (each draw denoised once), so the "
         "comparison below differs in the classifier only.")
if chosen_clf != OFF_THE_SHELF:
    info = finetuned_info(choices[chosen_clf])
    base = f" on {info['base']}" if info["base"] else ""
    st.caption(f"fine-tuned: **{chosen_clf}** — {info['kind']}{base}; method {info['method'] or '?'}, trained at "
               f"σ = {info['σ'] or '?'}.")
images = image_picker(b, "cert", default_count=4)

c1, c2, c3, c4, c5 = st.columns(5)
sigma = c1.number_input(WORDS["sigma"][0], value=float(b.preset.sigma), step=0.05, format="%.3f", key="cert_sigma",
                        help=WORDS["sigma"][1])
n0 = int(c2.number_input(WORDS["n0"][0], value=min(b.preset.n0, 100), step=10, key="cert_n0", help=WORDS["n0"][1]))
n = int(c3.number_input(WORDS["n"][0], value=min(b.preset.n, 1000), max_value=limits().n, step=100, key="cert_n",
                        help=WORDS["n"][1]))
alpha = c4.number_input(WORDS["alpha"][0], value=0.001, step=0.001, format="%.4f", key="cert_alpha",
                        help=WORDS["alpha"][1])
seed = int(c5.number_input("Seed", 0, 10**6, 0, key="cert_seed", help="Which noise draws: the same seed, the same "
                                                                        "noisy copies."))
with st.expander("The formulas behind σ, N0, N and α"):
    st.markdown(FORMULAS)


def _name(k: str) -> str:
    return k if k == OFF_THE_SHELF else f"fine-tuned: {k}"


if st.button("Certify", type="primary", disabled=images is None, key="cert_run"):
    rows = []
    bar = st.progress(0.0, text="starting …")
    waiting = st.empty()
    try:
        check_limits(n=n, images=len(images))
        names = [_name(chosen_clf)] + ([OFF_THE_SHELF] if baseline else [])
        classifiers = [b.classifier if chosen_clf == OFF_THE_SHELF else finetuned_classifier(choices[chosen_clf])]
        classifiers += [b.classifier] if baseline else []
        started = time.time()
        for k, (name, x, label) in enumerate(images):
            def progress(done: int, total: int, k: int = k, name: str = name) -> None:
                waiting.empty()
                share = (k + done / total) / len(images)
                left = time_left(time.time() - started, share)
                bar.progress(share, text=f"image {k + 1}/{len(images)} ({name}): {done}/{total} draws"
                             + (f" · {duration(left)} left" if left is not None and left >= 3 else ""))

            certs = certify_many(b, x, classifiers, sigma, n0, n, alpha, seed=seed + k, progress=progress,
                                 batch_size=min(b.preset.batch_size, 100),  # finer progress steps
                                 on_wait=lambda: waiting.info("Another session is certifying; waiting for it …"),
                                 on_position=lambda ahead: waiting.info(
                                     f":material/hourglass_top: {ahead} job(s) ahead of yours; yours starts when "
                                     "they finish."))
            for clf_name, cert in zip(names, certs):
                rows.append({**certificate_row(name, label, cert, cert.counts, b.classes, sigma, classifier=clf_name,
                                               n0=n0, alpha=alpha, idx=dataset_index(name), seed=seed + k,
                                               precision=b.acceleration.precision),
                             "_image": x})
        bar.progress(1.0, text=f"done: {len(images)} images in {time.time() - started:.1f} s")
        st.session_state["cert_last"] = rows
        st.session_state.setdefault("cert_history", []).extend(
            {k: v for k, v in r.items() if k != "_image"} for r in rows)
    except CadisError as e:
        bar.empty()
        st.error(hide_paths(str(e)))

rows = st.session_state.get("cert_last")
if rows:
    table = pd.DataFrame([{k: v for k, v in r.items() if k != "_image"} for r in rows])
    first = rows[0]
    several = len(set(table["classifier"])) > 1
    st.markdown(f"**{first['classifier']}**{' and the off-the-shelf baseline' if several else ''} · noise level "
                f"σ = {first['sigma']:g} · N0 = {first['N0']} copies to pick the class · N = {first['n']} noisy "
                f"copies · error probability α = {first['alpha']:g}")
    st.info(MEANING, icon=":material/info:")
    wrong = [r for r in rows if r["predict"] >= 0 and r["label"] >= 0 and r["predict"] != r["label"]]
    if wrong:  # a confident wrong answer must not read like a success: said in words, not only in a colour
        st.warning("**Certified, but wrong:** " + "; ".join(
            f"{r['image']} ({r['classifier']}) is certified as {r['prediction']}, but the true class is "
            f"{r['true class']}" for r in wrong) + ".", icon=":material/warning:")
    shown = table.drop(columns=["label", "predict", "idx", "seed"])
    lead = ["image", "true class", "prediction", "radius", "certificate", "classifier"]  # what a phone shows first
    st.dataframe(shown[lead + [c for c in shown.columns if c not in lead]], hide_index=True, key="cert_table",
                 column_config={"certificate": st.column_config.TextColumn(width="large")})
    main = [r for r in rows if r["classifier"] == first["classifier"]]
    st.image([to_uint8(r["_image"], 3) for r in main],
             caption=[f"{r['image']} {r['true class']} → {r['prediction']}, R = {r['radius']:.3f}"
                      + (" ⚠ certified, but WRONG" if r in wrong else "") for r in main],
             width=110)
    verdict = ["abstain" if r["predict"] < 0 else "correct" if r["predict"] == r["label"] else
               "unlabelled" if r["label"] < 0 else "wrong" for r in rows]
    bars = table.assign(verdict=verdict)
    fig = px.bar(bars, x="image", y="radius", color="classifier" if several else "verdict",
                 pattern_shape="verdict" if several else None, barmode="group", hover_data=["prediction"],
                 color_discrete_map=colour_map(table["classifier"]) if several else VERDICT_COLOURS,
                 labels={"radius": "certified ℓ2 radius"})
    fig.update_xaxes(type="category", title="image")  # '#3' would otherwise read as the number 3
    st.plotly_chart(fig, key="cert_bars")
    cap = max_radius(first["sigma"], first["n"], first["alpha"])
    at_cap = sum(r["radius"] >= cap - 1e-4 for r in main)
    st.markdown(radius_cap(first["sigma"], first["n"], first["alpha"]) +
                (f" Here {at_cap} of {len(main)} images reach it." if at_cap else ""))
    st.download_button("Download this table (CSV)", table.to_csv(index=False), "certificates.csv", "text/csv",
                       key="cert_csv")

if everything:  # today's full dashboard, for researchers
    st.header("Certified accuracy vs radius: every run")
    files = result_files(result_roots(visitor()))
    shipped, problems = _load_results(tuple((str(f), *_stamp(f)) for f in files))
    methods = {f"fine-tuned: {k}": finetuned_info(p)["method"] for k, p in choices.items()}
    session = session_results(st.session_state.get("cert_history", []), methods)
    runs = {**session, **shipped}
    for p in problems:
        st.warning(hide_paths(f"Skipped {p}"))
    if not runs:
        st.info("No results yet: none shipped in experiments/results/, none under runs/, and no labelled image "
                "certified in this session. Certify test images above, or run `cadis certify …`.")
    else:
        # runs certified since the last rerun join the comparison, each with its matching `none` baseline
        keep_selection("cert_runs", list(runs), default_runs(session, shipped, float(b.preset.sigma)),
                       joinable=list(session), companions=lambda k: baselines_for(k, runs))
        chosen = st.multiselect("Runs (classifier, σ, N, α)", list(runs), key="cert_runs")
        if chosen:
            picked = {k: runs[k] for k in chosen}
            envelope = st.checkbox("Best-σ envelope", value=False, key="cert_envelope")
            fig = paint(certified_accuracy_figure(picked, envelope=envelope))
            for trace in fig.data:  # this session's runs stand out from the shipped ones of the same method and σ
                if (trace.name or "").startswith("this session"):
                    trace.line.width = 4
            fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.2, x=0), height=520)  # long names
            st.plotly_chart(fig, key="cert_curve")
            caps = {(c.get("sigma"), c.get("n"), c.get("alpha")) for c in (df.attrs.get("config", {}) for df in
                                                                            picked.values())}
            caps = sorted(c for c in caps if None not in c)
            if caps:
                st.caption("Each curve drops to 0 at the largest radius its N allows (all N draws agree): " + "; ".join(
                    f"σ = {s:g}, N = {nn}, α = {a:g}: R ≤ {max_radius(s, nn, a):.3f}" for s, nn, a in caps) + ".")
            table = summary_table(picked, DEFAULT_RADII, envelope=envelope)
            st.dataframe(table.style.format(precision=3).format("{:.0f}", subset=["images"], na_rep=""),
                         key="cert_summary",
                         column_config={"_index": st.column_config.TextColumn("run", width="large")})
            st.download_button("Download the ACR table (CSV)", table.to_csv(), "certified_accuracy.csv", "text/csv",
                               key="cert_summary_csv")
            radius = st.select_slider("Per class, at radius", options=list(DEFAULT_RADII), value=0.0,
                                      key="cert_class_r")
            per_class = per_class_accuracy(picked, radius, b.classes).reset_index().melt(
                id_vars="run", var_name="class", value_name="certified accuracy")
            per_class["σ"] = [f"σ={s:g}" if (s := sigma_of(r)) is not None else "?" for r in per_class["run"]]
            st.plotly_chart(px.bar(per_class, x="class", y="certified accuracy", color="run", barmode="group",
                                   pattern_shape="σ" if per_class["σ"].nunique() > 1 else None,
                                   color_discrete_map=colour_map(picked), range_y=[0, 1], height=520).update_layout(
                                       legend=dict(orientation="h", yanchor="top", y=-0.3, x=0)), key="cert_per_class")
            pairable = [k for k in chosen if is_pairable(runs[k])]
            pair = default_pair(chosen, runs)
            if pair is not None:
                st.subheader("Paired comparison")
                if st.session_state.get("cert_pair_default") != pair:  # new runs, a new default: it replaces the old
                    st.session_state["cert_pair_default"] = pair
                    st.session_state["cert_pair_a"], st.session_state["cert_pair_b"] = pair
                for key, default in zip(("cert_pair_a", "cert_pair_b"), pair):  # a run that left the selection
                    if st.session_state.get(key) not in pairable:
                        st.session_state[key] = default
                left, right = st.columns(2)
                first = left.selectbox("Run A", pairable, key="cert_pair_a")
                second = right.selectbox("Run B", pairable, key="cert_pair_b")
                ca, cb = runs[first].attrs.get("config", {}), runs[second].attrs.get("config", {})
                differ = [name for k, name in (("sigma", "σ"), ("n", "N"), ("alpha", "α")) if ca.get(k) != cb.get(k)]
                if shared_draws(runs[first], runs[second]):
                    how = "on the same noise draws, so only the classifiers differ"
                else:
                    how = "on different noise draws, so the difference also holds the luck of the draws"
                too = "; they differ in " + ", ".join(differ) + " too" if differ else ""
                st.caption("Image by image, on the images both runs hold: which run certifies an image at r that "
                           "the other does not, and the exact McNemar test of the difference. These two were "
                           f"certified {how}{too}. Each p-value is for one comparison at one radius; among many, some "
                           "are small by chance.")
                try:
                    paired = paired_comparison(runs[first], runs[second], DEFAULT_RADII)
                    st.dataframe(paired.rename(columns={"a_only": "only A", "b_only": "only B",
                                                        "difference": "A − B"}).style.format(
                        {"A − B": "{:+.3f}", "p_value": "{:.2g}"}), key="cert_paired")
                except CadisError as e:
                    st.warning(hide_paths(str(e)))

verdict = shipped_verdict()
if verdict is not None:
    st.header("Does FT-CADIS hold up? The embedded benchmark")
    st.markdown("The paper's claim is *ft-cadis ≥ denoised-ce ≥ none at every radius*. Each row says where it holds "
                "on the embedded benchmark, and the worst radius of each pair (points of certified accuracy).")
    st.dataframe(verdict[0], key="cert_verdict")
    st.caption(verdict[1])
